//! `o3 completions` and the hidden `o3 manpages`: shell completion scripts and man pages, both
//! generated from the clap definition, so they never drift from `--help`.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

use super::{Cli, CliResult, Roots};

#[derive(Debug, clap::Args)]
#[command(after_help = "Install (then open a new shell):\n  \
    bash: o3 completions bash > ~/.local/share/bash-completion/completions/o3\n  \
    zsh:  o3 completions zsh > ~/.zfunc/_o3   (and `fpath+=(~/.zfunc)` before `compinit` in ~/.zshrc)\n  \
    fish: o3 completions fish > ~/.config/fish/completions/o3.fish")]
pub struct CompletionsArgs {
    /// The shell to write the script for: bash, zsh, fish, elvish or powershell.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: Shell,
}

#[derive(Debug, clap::Args)]
pub struct ManpagesArgs {
    /// The directory to write o3.1 and one o3-<subcommand>.1 per subcommand into (created if
    /// missing).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

pub fn completions(_roots: &Roots, a: CompletionsArgs) -> CliResult {
    let script = completion_script(a.shell);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)
        .and_then(|()| out.flush())
        .map_err(|e| (anyhow::anyhow!("writing to stdout: {e}"), 1))?;
    Ok(0)
}

pub fn manpages(_roots: &Roots, a: ManpagesArgs) -> CliResult {
    for path in write_man_pages(&a.dir).map_err(|e| (e, 1))? {
        println!("{}", path.display());
    }
    Ok(0)
}

/// The completion script for `shell`.
pub fn completion_script(shell: Shell) -> Vec<u8> {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "o3", &mut buf);
    buf
}

/// Every man page as (file name, roff text): `o3.1`, then `o3-<sub>.1` for each visible
/// subcommand, parents first (`o3-config-check.1` too, so the SUBCOMMANDS sections' references
/// resolve).
pub fn man_pages() -> std::io::Result<Vec<(String, Vec<u8>)>> {
    // No `help` subcommand: it would be listed as o3-help(1), a page nobody needs.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    render_pages(&cmd, "o3", &mut pages)?;
    Ok(pages)
}

fn render_pages(
    cmd: &clap::Command,
    name: &str,
    pages: &mut Vec<(String, Vec<u8>)>,
) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone().display_name(name.to_owned()))
        .title(name.to_uppercase())
        .source(format!("o3 {}", env!("CARGO_PKG_VERSION")));
    let mut text = Vec::new();
    man.render(&mut text)?;
    pages.push((format!("{name}.1"), text));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        render_pages(sub, &format!("{name}-{}", sub.get_name()), pages)?;
    }
    Ok(())
}

/// Writes every man page into `dir` (created if missing) and returns the paths written.
pub fn write_man_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create {}: {e} (choose a writable DIR)",
            dir.display()
        )
    })?;
    let pages =
        man_pages().map_err(|e| anyhow::anyhow!("rendering the man pages: {e} (a bug in o3)"))?;
    let mut written = Vec::with_capacity(pages.len());
    for (file, text) in pages {
        let path = dir.join(file);
        std::fs::write(&path, text).map_err(|e| {
            anyhow::anyhow!(
                "cannot write {}: {e} (choose a writable DIR)",
                path.display()
            )
        })?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command tree as clap builds it (global arguments propagated, `help` added).
    fn built() -> clap::Command {
        let mut cmd = Cli::command();
        cmd.build();
        cmd
    }

    /// Every command in the tree with its full name (`o3 config check`).
    fn walk(cmd: &clap::Command, name: String, out: &mut Vec<(String, clap::Command)>) {
        for sub in cmd.get_subcommands() {
            walk(sub, format!("{name} {}", sub.get_name()), out);
        }
        out.push((name, cmd.clone()));
    }

    fn all_commands() -> Vec<(String, clap::Command)> {
        let mut out = Vec::new();
        walk(&built(), "o3".into(), &mut out);
        out
    }

    fn visible_subcommands() -> Vec<String> {
        Cli::command()
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| s.get_name().to_owned())
            .collect()
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_subcommand_and_argument_has_help() {
        let mut missing = Vec::new();
        for (name, cmd) in all_commands() {
            if cmd.get_about().is_none() && cmd.get_long_about().is_none() && name != "o3" {
                missing.push(format!("{name}: no about text"));
            }
            for arg in cmd.get_arguments() {
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    let what = match arg.get_long() {
                        Some(l) => format!("--{l}"),
                        None => format!("<{}>", arg.get_id()),
                    };
                    missing.push(format!("{name} {what}: no help text"));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "add a doc comment to each of these:\n  {}",
            missing.join("\n  ")
        );
    }

    #[test]
    fn completions_name_every_visible_subcommand() {
        let subs = visible_subcommands();
        assert!(subs.iter().any(|s| s == "optimize"), "{subs:?}");
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = String::from_utf8(completion_script(shell)).unwrap();
            let missing: Vec<_> = subs.iter().filter(|s| !script.contains(*s)).collect();
            assert!(missing.is_empty(), "{shell}: missing {missing:?}");
        }
    }

    #[test]
    fn completions_after_help_says_how_to_install() {
        let cmd = built();
        let sub = cmd.find_subcommand("completions").unwrap();
        let after = sub.get_after_help().unwrap().to_string();
        for shell in ["bash", "zsh", "fish"] {
            assert!(
                after.contains(&format!("o3 completions {shell} >")),
                "{after}"
            );
        }
    }

    #[test]
    fn man_pages_render_for_every_subcommand() {
        let pages = man_pages().unwrap();
        let names: Vec<_> = pages.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.first(), Some(&"o3.1"), "{names:?}");
        let mut expected: Vec<String> = visible_subcommands()
            .into_iter()
            .filter(|s| s != "help")
            .map(|s| format!("o3-{s}.1"))
            .collect();
        expected.push("o3-config-check.1".into());
        for e in &expected {
            assert!(names.contains(&e.as_str()), "no {e} in {names:?}");
        }
        assert!(
            !names.contains(&"o3-manpages.1"),
            "the hidden one has a page"
        );
        assert!(!names.contains(&"o3-help.1"), "{names:?}");
        for (name, text) in &pages {
            let text = String::from_utf8(text.clone()).unwrap();
            let title = name.strip_suffix(".1").unwrap().to_uppercase();
            assert!(text.contains(&format!(".TH {title} 1")), "{name}: {text}");
            assert!(text.contains(".SH NAME"), "{name}");
        }
        let record = &pages.iter().find(|(n, _)| n == "o3-record.1").unwrap().1;
        let record = String::from_utf8_lossy(record);
        assert!(record.contains("o3\\-record"), "{record}");
        assert!(record.contains("o3 record"), "synopsis: {record}");
    }

    #[test]
    fn man_pages_are_written_into_a_new_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("share/man/man1");
        let written = write_man_pages(&dir).unwrap();
        assert!(written.contains(&dir.join("o3.1")));
        assert!(written.contains(&dir.join("o3-optimize.1")));
        for p in &written {
            assert!(std::fs::metadata(p).unwrap().len() > 0, "{}", p.display());
        }
    }

    #[test]
    fn man_pages_into_an_unwritable_place_say_what_to_do() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("a-file");
        std::fs::write(&file, "x").unwrap();
        let err = format!("{:#}", write_man_pages(&file.join("man")).unwrap_err());
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("cannot create ") && err.contains("choose a writable DIR"),
            "{err}"
        );
    }
}
