//! Shell quoting: a command line as a POSIX shell reads it back, so a printed command can be
//! copied and pasted.

/// Characters that never need quoting in a POSIX shell word.
fn plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c)
}

/// One argument as a shell word: unchanged when it has only plain characters, else in single
/// quotes (inside which nothing is special), a `'` written as `'\''`; the empty string is `''`.
pub fn quote(arg: &str) -> String {
    if !arg.is_empty() && arg.chars().all(plain) {
        return arg.to_string();
    }
    format!("'{}'", arg.replace('\'', r"'\''"))
}

/// A whole command line: each argument quoted, joined by spaces.
pub fn join<S: AsRef<str>>(argv: &[S]) -> String {
    argv.iter()
        .map(|a| quote(a.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_words_stay_as_they_are() {
        assert_eq!(quote("llama-server"), "llama-server");
        assert_eq!(quote("/usr/bin/python3.12"), "/usr/bin/python3.12");
        assert_eq!(quote("--ctx-size=8192"), "--ctx-size=8192");
        assert_eq!(quote("a,b:c@d%e+f"), "a,b:c@d%e+f");
    }

    #[test]
    fn special_characters_are_single_quoted() {
        assert_eq!(quote(""), "''");
        assert_eq!(quote("two words"), "'two words'");
        assert_eq!(quote("$HOME"), "'$HOME'");
        assert_eq!(quote("a\"b"), "'a\"b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("'"), r"''\'''");
        assert_eq!(quote("*.gguf"), "'*.gguf'");
        assert_eq!(quote("~/m"), "'~/m'");
        assert_eq!(quote("a\\b"), "'a\\b'");
        assert_eq!(quote("line\nbreak"), "'line\nbreak'");
        assert_eq!(quote("x;y|z&"), "'x;y|z&'");
        assert_eq!(quote("é"), "'é'");
        // The artefacts' command lines (optimize/artefacts.rs) are quoted here too.
        assert_eq!(
            quote("plain-word_1.2:3=a,b+c/d"),
            "plain-word_1.2:3=a,b+c/d"
        );
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("~/m.gguf"), "'~/m.gguf'");
        assert_eq!(quote("a*b;c"), "'a*b;c'");
    }

    #[test]
    fn a_command_line_reads_back_through_a_shell() {
        let argv = [
            "sh",
            "-c",
            "for i in $(seq 3); do echo \"$i\"; done",
            "",
            "it's",
        ];
        let line = join(&argv);
        assert_eq!(
            line,
            r#"sh -c 'for i in $(seq 3); do echo "$i"; done' '' 'it'\''s'"#
        );
        // The shell splits it back into the same words.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("for a in {line}; do printf '[%s]' \"$a\"; done"))
            .output()
            .expect("running sh");
        let want: String = argv.iter().map(|a| format!("[{a}]")).collect();
        assert_eq!(String::from_utf8_lossy(&out.stdout), want);
    }
}
