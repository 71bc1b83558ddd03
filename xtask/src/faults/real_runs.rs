//! Scenarios on real runs: the undisturbed reference, signals mid-probe, a crashed or
//! stopped server, a full disk, a damaged store or journal.

use super::*;

impl Suite {
    pub(super) fn optimize(&self, c: &Scn, run: &Path, config: &Path) -> Command {
        let mut cmd = c.o3();
        cmd.args(["optimize", "--backend", "llama-server", "--server-bin"])
            .arg(&self.server_bin)
            .arg("--model")
            .arg(&self.model)
            .arg("--config")
            .arg(config)
            .arg("--out")
            .arg(run)
            .args(["--quiet", "--json"]);
        cmd
    }

    pub(super) fn simulated(&self, c: &Scn, run: &Path, db: &Path) -> Command {
        let mut cmd = c.o3();
        cmd.args(["optimize", "--simulate"])
            .arg(root().join("bench/optimize/default-12gib.json"))
            .arg("--out")
            .arg(run)
            .arg("--db")
            .arg(db)
            .args(["--quiet", "--json"]);
        cmd
    }
}

pub(super) fn resume(c: &Scn, run: &Path) -> Command {
    let mut cmd = c.o3();
    cmd.args(["optimize", "--resume"])
        .arg(run)
        .args(["--json", "--quiet"]);
    cmd
}

pub(super) fn undisturbed(s: &mut Suite, c: &mut Scn) -> Result<String> {
    let run = c.dir.join("run");
    let out = c.run(s.optimize(c, &run, &s.config), RUN_LIMIT)?;
    let j = out.success()?;
    let answer = j["context"]["validated"].clone();
    s.reference = Some(answer.clone());
    s.undisturbed = Some(run);
    Ok(format!(
        "answer {}, {} probes",
        show(&answer),
        count(&j["probes"]["total"])
    ))
}

pub(super) fn kill_9(s: &mut Suite, c: &mut Scn) -> Result<String> {
    interrupted(s, c, Signal::SIGKILL, 0)
}

pub(super) fn sigint(s: &mut Suite, c: &mut Scn) -> Result<String> {
    interrupted(s, c, Signal::SIGINT, 1)
}

pub(super) fn sigterm(s: &mut Suite, c: &mut Scn) -> Result<String> {
    interrupted(s, c, Signal::SIGTERM, 0)
}

pub(super) fn sighup(s: &mut Suite, c: &mut Scn) -> Result<String> {
    interrupted(s, c, Signal::SIGHUP, 1)
}

/// A run signalled mid-probe (once `after` probes are journaled, while the next one's server
/// runs): its server is gone within [`GRACE`], and the resumed run keeps every journaled probe
/// and finds the undisturbed answer.
pub(super) fn interrupted(s: &mut Suite, c: &mut Scn, sig: Signal, after: usize) -> Result<String> {
    let run = c.dir.join("run");
    let mut r = c.start(s.optimize(c, &run, &s.config), RUN_LIMIT)?;
    let step = (|| -> Result<(u32, usize)> {
        let mut server = r.server(&s.server_bin, &[])?;
        if after > 0 {
            r.journal_lines(&run, after)?;
            server = r.server(&s.server_bin, &[server])?;
        }
        std::thread::sleep(SETTLE);
        let noted = complete_lines(&run.join("journal.jsonl"));
        r.signal(sig);
        Ok((server, noted))
    })();
    let out = c.finish(r);
    let (server, noted) = step.map_err(|e| anyhow!("{e:#}: {}", out.brief()))?;
    let gone = gone_within(server, GRACE);
    let expected = match sig {
        Signal::SIGKILL => out
            .status
            .is_some_and(|s| std::os::unix::process::ExitStatusExt::signal(&s) == Some(9)),
        _ => out.code() == Some(130),
    };
    if !expected {
        c.problem(format!(
            "o3 did not end as the signal asks: {}",
            out.brief()
        ));
    }
    if sig != Signal::SIGKILL {
        let summary = std::fs::read_to_string(run.join("summary.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok());
        if summary.as_ref().map(|s| &s["interrupted"]) != Some(&Value::Bool(true)) {
            c.problem("summary.json does not say `interrupted: true`");
        }
    }
    let gone_text = match gone {
        Some(d) => format!("server gone in {:.2} s", d.as_secs_f64()),
        None => {
            c.problem(format!(
                "server {server} outlived o3 by more than {} s",
                GRACE.as_secs()
            ));
            format!("server {server} left running")
        }
    };
    let status = match out.code() {
        Some(code) => format!("exit {code}"),
        None => "killed".into(),
    };
    let resumed = c.run(resume(c, &run), RUN_LIMIT)?;
    let j = match resumed.success() {
        Ok(j) => j,
        Err(e) => {
            c.lose(1, format!("the run directory is unusable: --resume: {e:#}"));
            return Ok(format!("{status}, {gone_text}; resume failed"));
        }
    };
    let kept = count(&j["probes"]["from_journal"]);
    if (kept as usize) < noted {
        c.lose(
            noted as u64 - kept,
            format!("resume kept {kept} of the {noted} journaled probes"),
        );
    }
    c.same_answer(s, &j);
    Ok(format!(
        "{status}, {gone_text}; resumed: {}, answer {}",
        kept_text(kept, noted),
        show(&j["context"]["validated"])
    ))
}

/// The server killed with SIGKILL once mid-probe: the probe is retried once and the run
/// finds the undisturbed answer.
pub(super) fn server_crash(s: &mut Suite, c: &mut Scn) -> Result<String> {
    let run = c.dir.join("run");
    let mut r = c.start(s.optimize(c, &run, &s.config), RUN_LIMIT)?;
    let step = (|| -> Result<u32> {
        // At once, as a stray `kill -9` would: the server is loading, mid-probe.
        let server = r.server(&s.server_bin, &[])?;
        // The server the o3 we started started.
        let _ = signal::kill(pid(server), Signal::SIGKILL);
        Ok(server)
    })();
    let out = c.finish(r);
    step.map_err(|e| anyhow!("{e:#}: {}", out.brief()))?;
    let j = out.success()?;
    c.same_answer(s, &j);
    let journal = std::fs::read_to_string(run.join("journal.jsonl")).unwrap_or_default();
    let retried = journal.lines().position(|l| {
        serde_json::from_str::<Value>(l).is_ok_and(|v| {
            v["outcome"]["notes"].as_array().is_some_and(|n| {
                n.iter()
                    .any(|n| n.as_str().is_some_and(|n| n.contains("retried once")))
            })
        })
    });
    match retried {
        Some(i) => Ok(format!(
            "probe {} retried once, answer {}",
            i + 1,
            show(&j["context"]["validated"])
        )),
        None => bail!("no probe's outcome.notes in the journal says \"retried once\""),
    }
}

/// The second probe's server stopped with SIGSTOP: the run ends on its own and leaves no
/// stopped process.
pub(super) fn server_hang(s: &mut Suite, c: &mut Scn) -> Result<String> {
    let run = c.dir.join("run");
    let mut r = c.start(s.optimize(c, &run, &s.hang_config), RUN_LIMIT)?;
    let step = (|| -> Result<u32> {
        let first = r.server(&s.server_bin, &[])?;
        r.journal_lines(&run, 1)?;
        let second = r.server(&s.server_bin, &[first])?;
        std::thread::sleep(SETTLE);
        // The server the o3 we started started.
        let _ = signal::kill(pid(second), Signal::SIGSTOP);
        Ok(second)
    })();
    let out = c.finish(r);
    let stopped = step.map_err(|e| anyhow!("{e:#}: {}", out.brief()))?;
    let gone = gone_within(stopped, GRACE);
    let left: Vec<u32> = marked_by(&c.owners)
        .into_iter()
        .filter(|(_, state, _)| matches!(state, 'T' | 't'))
        .map(|(pid, _, _)| pid)
        .collect();
    let left_text = if gone.is_none() || !left.is_empty() {
        c.problem(format!(
            "stopped processes left behind: {:?}",
            gone.map_or(vec![stopped], |_| left)
        ));
        "a stopped process left"
    } else {
        "nothing left stopped"
    };
    let j = out.success()?;
    Ok(format!(
        "server {stopped} stopped in probe 2; run ended on its own in {:.0} s, answer {}; {left_text}",
        out.secs,
        show(&j["context"]["validated"])
    ))
}

/// A tmpfs mounted for one scenario, unmounted when dropped (also on failure).
pub(super) struct Tmpfs(pub(super) PathBuf);

impl Tmpfs {
    pub(super) fn mount(at: &Path, size: &str) -> Result<Tmpfs> {
        std::fs::create_dir_all(at)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .context("starting mount")?;
        if !out.status.success() {
            bail!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(Tmpfs(at.to_path_buf()))
    }

    pub(super) fn resize(&self, size: &str) -> Result<()> {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .output()
            .context("starting mount")?;
        if !out.status.success() {
            bail!(
                "mount -o remount failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// A run whose disk fills partway: one line says so, the journal holds only whole records
/// (but a cut last line), and the resume on a larger disk finds the undisturbed answer.
pub(super) fn disk_full(s: &mut Suite, c: &mut Scn) -> Result<String> {
    if !nix::unistd::geteuid().is_root() {
        bail!("needs root to mount a tmpfs: run as root");
    }
    // A third of what a whole run took (the undisturbed run's directory): the disk fills
    // partway through.
    let whole = s.undisturbed.as_deref().map_or(768 << 10, tmpfs_bytes);
    let kib = (whole / 3 / 1024).div_ceil(4) * 4;
    let kib = kib.max(64);
    let disk = Tmpfs::mount(&c.dir.join("disk"), &format!("{kib}k"))?;
    let run = disk.0.join("run");
    let out = c.run(s.optimize(c, &run, &s.config), RUN_LIMIT)?;
    if out.code() == Some(0) {
        bail!(
            "the run finished on a {kib} KiB disk (a whole run takes {} KiB)",
            whole >> 10
        );
    }
    match out.one_line() {
        Ok(l) => {
            let lower = l.to_lowercase();
            if !["no space left", "os error 28", "disk is full", "disk full"]
                .iter()
                .any(|w| lower.contains(w))
            {
                c.problem(format!("the error does not name the full disk: {l}"));
            }
        }
        Err(e) => c.problem(e),
    }
    let journal = std::fs::read(run.join("journal.jsonl")).unwrap_or_default();
    let whole_lines: Vec<&[u8]> = {
        let mut v: Vec<&[u8]> = journal.split(|&b| b == b'\n').collect();
        v.pop(); // the part after the last newline: empty, or a cut last line
        v
    };
    let bad = whole_lines
        .iter()
        .filter(|l| serde_json::from_slice::<Value>(l).is_err())
        .count();
    if bad > 0 {
        c.lose(
            bad as u64,
            format!("{bad} journal line(s) are not valid JSON"),
        );
    }
    let noted = whole_lines.len();
    disk.resize("256m")?;
    let resumed = c.run(resume(c, &run), RUN_LIMIT)?;
    let j = match resumed.success() {
        Ok(j) => j,
        Err(e) => {
            c.lose(1, format!("the run directory is unusable: --resume: {e:#}"));
            return Ok(format!("{kib} KiB disk: {}; resume failed", out.brief()));
        }
    };
    let kept = count(&j["probes"]["from_journal"]);
    if (kept as usize) < noted {
        c.lose(
            (noted as u64).saturating_sub(kept),
            format!("resume kept {kept} of the {noted} journaled probes"),
        );
    }
    c.same_answer(s, &j);
    drop(disk);
    Ok(format!(
        "{kib} KiB disk: exit {} after {}; on 256 MiB resumed: {}, answer {}",
        out.code().map_or("-".into(), |c| c.to_string()),
        plural(noted as u64, "journaled probe"),
        kept_text(kept, noted),
        show(&j["context"]["validated"])
    ))
}

/// A store whose pages after the first are overwritten is refused before anything is written:
/// one line, the store's bytes unchanged, no run directory created.
pub(super) fn damaged_store(s: &mut Suite, c: &mut Scn) -> Result<String> {
    let db = c.dir.join("store.db");
    let first = c.run(s.simulated(c, &c.dir.join("first"), &db), SHORT_LIMIT)?;
    first.success().context("making the store")?;
    let mut bytes = std::fs::read(&db).with_context(|| format!("reading {}", db.display()))?;
    if bytes.len() < 18 {
        bail!("{} is {} bytes: not a database", db.display(), bytes.len());
    }
    let page = match u16::from_be_bytes([bytes[16], bytes[17]]) {
        1 => 65536,
        p => p as usize,
    };
    for (i, b) in bytes.iter_mut().enumerate().skip(page) {
        *b = 0xA5 ^ (i as u8);
    }
    std::fs::write(&db, &bytes)?;
    let pages = bytes.len().div_ceil(page) - 1;
    let second_dir = c.dir.join("second");
    let out = c.run(s.simulated(c, &second_dir, &db), SHORT_LIMIT)?;
    if out.code() == Some(0) || out.hung {
        bail!("the damaged store was used: {}", out.brief());
    }
    match out.one_line() {
        Ok(l) if l.contains("damaged") && l.contains(&*db.to_string_lossy()) => {}
        Ok(l) => c.problem(format!(
            "the error does not name the database as damaged: {l}"
        )),
        Err(e) => c.problem(e),
    }
    if std::fs::read(&db).ok().as_ref() != Some(&bytes) {
        c.lose(1, "the damaged store's bytes changed");
    }
    if second_dir.exists() {
        c.problem(format!("{} was created", second_dir.display()));
    }
    Ok(format!(
        "{pages} of {} pages overwritten: refused with one line (exit {}), store unchanged, no --out",
        pages + 1,
        out.code().map_or("-".into(), |c| c.to_string())
    ))
}

/// The undisturbed run's journal cut in its last line (inside a multi-byte character where
/// that line holds one): report works and the resume re-runs only the cut probe. And a copy
/// whose middle line is garbage: report works and names the line.
pub(super) fn damaged_journal(s: &mut Suite, c: &mut Scn) -> Result<String> {
    let Some(src) = s.undisturbed.clone() else {
        bail!("no undisturbed run to damage");
    };
    let journal = std::fs::read(src.join("journal.jsonl")).context("reading the journal")?;
    let (lines, cut, inside) = last_line_cut(&journal)?;
    let cut_dir = c.dir.join("cut");
    copy_tree(&src, &cut_dir)?;
    std::fs::write(cut_dir.join("journal.jsonl"), &journal[..cut])?;
    let report_cut = report_on_cut(c, &cut_dir)?;
    let resume_text = resume_cut(s, c, &cut_dir, lines)?;
    let (mid, report_garbage) = report_on_garbage(c, &src, &journal, lines)?;
    Ok(format!(
        "line {lines} cut {inside}: {report_cut}, {resume_text}; garbage line {}: {report_garbage}",
        mid + 1
    ))
}

/// The journal's line count and where to cut its last line: inside a multi-byte character
/// where that line holds one, else mid-line; and which of the two it is.
pub(super) fn last_line_cut(journal: &[u8]) -> Result<(usize, usize, &'static str)> {
    let lines = journal.iter().filter(|&&b| b == b'\n').count();
    if lines < 2 || journal.last() != Some(&b'\n') {
        bail!("the undisturbed run's journal has {lines} line(s): too few to damage");
    }
    let body = &journal[..journal.len() - 1];
    let start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let (cut, inside) = match (start..body.len()).find(|&i| body[i] >= 0xC0) {
        Some(i) => (i + 1, "inside a multi-byte character"),
        None => (
            start + (body.len() - start) / 2,
            "mid-line; no multi-byte character",
        ),
    };
    Ok((lines, cut, inside))
}

/// `o3 report` on the run with the cut journal: it works, or refuses with one line.
pub(super) fn report_on_cut(c: &mut Scn, cut_dir: &Path) -> Result<&'static str> {
    let mut report = c.o3();
    report.arg("report").arg(cut_dir);
    let out = c.run(report, SHORT_LIMIT)?;
    if out.code() != Some(0) && !out.hung && !out.panicked() {
        if let Err(e) = out.one_line() {
            c.problem(format!("report on the cut journal: {e}"));
        }
    }
    Ok(if out.code() == Some(0) {
        "report ok"
    } else {
        "report refused"
    })
}

/// `--resume` of the run with the cut journal: it keeps every whole line, re-runs only the
/// cut probe and finds the undisturbed answer.
pub(super) fn resume_cut(s: &Suite, c: &mut Scn, cut_dir: &Path, lines: usize) -> Result<String> {
    let resumed = c.run(resume(c, cut_dir), RUN_LIMIT)?;
    Ok(match resumed.success() {
        Ok(j) => {
            let (kept, ran) = (
                count(&j["probes"]["from_journal"]),
                count(&j["probes"]["ran_now"]),
            );
            let want = (lines - 1) as u64;
            if kept < want {
                c.lose(
                    want - kept,
                    format!("resume kept {kept} of the {want} whole journal lines"),
                );
            }
            if ran != 1 {
                c.problem(format!("resume ran {ran} probes, not only the cut one"));
            }
            c.same_answer(s, &j);
            format!(
                "resumed: {kept} kept, {ran} re-run, answer {}",
                show(&j["context"]["validated"])
            )
        }
        Err(e) => {
            c.lose(
                1,
                format!("the cut run directory is unusable: --resume: {e:#}"),
            );
            "resume failed".into()
        }
    })
}

/// A copy of the run whose journal's middle line is garbage: `o3 report` works and its
/// notice names the line. Returns the line's index and the report's outcome.
pub(super) fn report_on_garbage(
    c: &mut Scn,
    src: &Path,
    journal: &[u8],
    lines: usize,
) -> Result<(usize, &'static str)> {
    let garbage_dir = c.dir.join("garbage");
    copy_tree(src, &garbage_dir)?;
    let mid = lines / 2;
    let mut parts: Vec<&[u8]> = journal.split(|&b| b == b'\n').collect();
    parts[mid] = b"\x00{\"key\": garbage \xff\xfe not a record";
    std::fs::write(garbage_dir.join("journal.jsonl"), parts.join(&b'\n'))?;
    let mut report = c.o3();
    report.arg("report").arg(&garbage_dir);
    let out = c.run(report, SHORT_LIMIT)?;
    let named = format!("line {}", mid + 1);
    let report_garbage = if out.code() == Some(0) {
        "report ok"
    } else {
        "report failed"
    };
    if out.code() != Some(0) {
        c.problem(format!(
            "report on a journal with a garbage line: {}",
            out.brief()
        ));
    } else if !out.stderr.contains(&named) {
        c.problem(format!(
            "report's notice does not name {named} of the journal: {:?}",
            out.stderr.trim()
        ));
    }
    Ok((mid, report_garbage))
}
