//! `o3 report` on real runs: an `o3 optimize` of llama.cpp's llama-server doing real inference
//! (the tiny test model from `cargo xtask setup`), reported as Markdown with SVG plots and as
//! one HTML page that is then opened in a real headless Chromium (Debian's package, installed by
//! `cargo xtask setup`): no console errors, every plot in the DOM, and plots visible in the
//! screenshot. Also a run cut before its summary, and bad input.

// A test may unwrap: a panic there is the failure, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

fn short_config() -> PathBuf {
    fixtures().join("../../config/short.yaml")
}

/// The browser `cargo xtask setup` installs (O3_TEST_CHROMIUM, else /usr/bin/chromium). Without
/// it: skip with the reason, or fail under O3_REQUIRE_SERVER=1 (CI).
fn chromium() -> Option<PathBuf> {
    let bin = std::env::var_os("O3_TEST_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if bin.is_file() {
        return Some(bin);
    }
    let why = format!("no Chromium at {}", bin.display());
    missing(&why, "`cargo xtask setup` installs Debian's chromium")
}

/// What headless Chromium saw of a page: the console messages it logged, the DOM after
/// rendering, and a screenshot (PNG) of the first `h` pixels.
struct Seen {
    console: Vec<String>,
    dom: String,
    png: Vec<u8>,
}

fn open_in_chromium(bin: &Path, page: &Path, w: u32, h: u32) -> Seen {
    let dir = tempfile::tempdir().unwrap();
    let shot = dir.path().join("shot.png");
    let url = format!("file://{}", page.canonicalize().unwrap().display());
    let base = |c: &mut Command| {
        c.args(["90", bin.to_str().unwrap()])
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                "--enable-logging=stderr",
                "--v=0",
            ])
            .arg(format!(
                "--user-data-dir={}",
                dir.path().join("profile").display()
            ))
            .arg(format!("--window-size={w},{h}"));
    };
    let mut c = Command::new("timeout");
    base(&mut c);
    let shot_out = c
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        shot_out.status.success(),
        "chromium --screenshot failed: {}",
        String::from_utf8_lossy(&shot_out.stderr)
    );
    let mut c = Command::new("timeout");
    base(&mut c);
    let dom_out = c.arg("--dump-dom").arg(&url).output().unwrap();
    assert!(dom_out.status.success());
    // Console messages are logged as `...:INFO:CONSOLE(12)] "message", source: ...`.
    let console = String::from_utf8_lossy(&shot_out.stderr)
        .lines()
        .chain(String::from_utf8_lossy(&dom_out.stderr).lines())
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_string)
        .collect();
    Seen {
        console,
        dom: String::from_utf8_lossy(&dom_out.stdout).into_owned(),
        png: std::fs::read(&shot).unwrap(),
    }
}

/// Pixels within a small distance of `rgb` in an RGB(A) PNG, and the image size.
fn count_colour(png_bytes: &[u8], rgb: (u8, u8, u8)) -> (usize, (u32, u32)) {
    let dec = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let px = match info.color_type {
        png::ColorType::Rgba => 4,
        png::ColorType::Rgb => 3,
        other => panic!("unexpected screenshot colour type {other:?}"),
    };
    let n = buf[..info.buffer_size()]
        .chunks(px)
        .filter(|p| {
            let d = |a: u8, b: u8| (i32::from(a) - i32::from(b)).abs();
            d(p[0], rgb.0) + d(p[1], rgb.1) + d(p[2], rgb.2) < 40
        })
        .count();
    (n, (info.width, info.height))
}

fn bytes_label(b: u64) -> String {
    // The report's own unit formatting, restated: MiB with one decimal below 1 GiB.
    if b >= 1 << 30 {
        format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    }
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario end to end, each step asserted in order
fn a_real_run_reports_as_markdown_and_html_that_chromium_renders_cleanly() {
    let Some((bin, model)) = server() else {
        return;
    };
    let Some(chrome) = chromium() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = o3()
        .args(["optimize", "--backend", "llama-server", "--quiet", "--json"])
        .arg("--config")
        .arg(short_config())
        .arg("--server-bin")
        .arg(&bin)
        .arg("--model")
        .arg(&model)
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap();
    let s: Value = last_json(&out);
    assert_eq!(out.status.code(), Some(0), "{s}");

    // One trace file per probe the journal holds, each a readable trace with samples.
    let journal: Vec<Value> = std::fs::read_to_string(run.join("journal.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut traces: Vec<PathBuf> = std::fs::read_dir(run.join("traces"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    traces.sort();
    assert_eq!(traces.len(), journal.len(), "{traces:?}");
    let a = o3()
        .arg("analyze")
        .arg(&traces[0])
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(
        a.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&a.stderr)
    );
    assert!(last_json(&a)["samples"].as_u64().unwrap() > 10);

    let rep = o3().arg("report").arg(&run).arg("--html").output().unwrap();
    let stderr = String::from_utf8_lossy(&rep.stderr);
    assert_eq!(rep.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.is_empty(),
        "a clean run reports no problems: {stderr}"
    );
    let listed: Vec<String> = String::from_utf8_lossy(&rep.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let md_path = run.join("report/report.md");
    let html_path = run.join("report/report.html");
    assert_eq!(
        listed,
        vec![
            md_path.display().to_string(),
            html_path.display().to_string()
        ]
    );

    // Markdown: the sections, and every plot it links is an SVG file beside it.
    let md = std::fs::read_to_string(&md_path).unwrap();
    for section in [
        "## Run",
        "## Presets",
        "## Context search",
        "## Batch size",
        "## Concurrency",
        "## Resources",
        "## Statistics per configuration",
        "## Learning: reused and predicted",
    ] {
        assert!(md.contains(section), "{section} missing:\n{md}");
    }
    let links: Vec<&str> = md
        .lines()
        .filter_map(|l| l.strip_prefix("![")?.split("](").nth(1)?.strip_suffix(')'))
        .collect();
    for want in [
        "plots/context-decode.svg",
        "plots/batch.svg",
        "plots/concurrency-throughput.svg",
        "plots/memory-server.svg",
        "plots/memory-system.svg",
        "plots/cpu.svg",
    ] {
        assert!(links.contains(&want), "{want} not linked: {links:?}");
    }
    for l in &links {
        let svg = std::fs::read_to_string(run.join("report").join(l)).unwrap();
        assert!(
            svg.starts_with("<?xml") && svg.trim_end().ends_with("</svg>"),
            "{l}"
        );
    }
    // Each preset's command line is there to paste.
    for p in s["presets"].as_array().unwrap() {
        if let Some(cmd) = p["artefacts"]["command_line"].as_str() {
            assert!(md.contains(cmd), "{cmd}");
        }
    }
    // The server's peak is marked with the exact peak the probes measured (the journal's
    // largest, kept by eBPF when root), and the RAM threshold is drawn at 85 % of MemTotal.
    let peak = journal
        .iter()
        .filter_map(|j| j["outcome"]["rss_peak_bytes"].as_u64())
        .max()
        .unwrap();
    let mem_svg = std::fs::read_to_string(run.join("report/plots/memory-server.svg")).unwrap();
    assert!(
        mem_svg.contains(&format!("peak {} at", bytes_label(peak))),
        "peak {peak} B not marked"
    );
    let sys_svg = std::fs::read_to_string(run.join("report/plots/memory-system.svg")).unwrap();
    assert!(sys_svg.contains("RAM safety limit 85 %"));

    // HTML: self-contained (no scripts, stylesheets, images or network addresses).
    let html = std::fs::read_to_string(&html_path).unwrap();
    let plots = links.len();
    assert_eq!(html.matches("<svg").count(), plots);
    let outside_svg = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    for banned in [
        "<script", "<link", "<img", "<iframe", "http://", "https://", "url(",
    ] {
        assert!(!outside_svg.contains(banned), "{banned} in the page");
    }

    // In a real browser: no console message at all, every plot in the rendered DOM, and the
    // plots' colours on screen.
    let seen = open_in_chromium(&chrome, &html_path, 1200, 2400);
    assert!(seen.console.is_empty(), "console: {:?}", seen.console);
    assert_eq!(seen.dom.matches("<svg").count(), plots, "plots in the DOM");
    assert!(seen.dom.contains("Context search"));
    let (blue, size) = count_colour(&seen.png, (31, 119, 180));
    let (orange, _) = count_colour(&seen.png, (255, 127, 14));
    assert_eq!(size, (1200, 2400));
    // Nothing else on the page is drawn in these colours (about 1400 and 1000 when measured).
    assert!(
        blue > 600,
        "decode and TTFT lines on screen: {blue} blue pixels"
    );
    assert!(
        orange > 400,
        "prefill line on screen: {orange} orange pixels"
    );

    // The detector itself: a page with a script error is caught.
    let bad = dir.path().join("bad.html");
    std::fs::write(
        &bad,
        "<!DOCTYPE html><html><body><p>x</p><script>console.error('broken'); nope();</script></body></html>",
    )
    .unwrap();
    let seen = open_in_chromium(&chrome, &bad, 400, 300);
    assert!(
        seen.console.iter().any(|l| l.contains("broken"))
            && seen.console.iter().any(|l| l.contains("nope")),
        "{:?}",
        seen.console
    );
}

#[test]
fn a_run_cut_before_its_summary_still_reports_what_it_has() {
    let dir = tempfile::tempdir().unwrap();
    let sim = dir.path().join("sim.json");
    std::fs::write(&sim, "{}").unwrap();
    let run = dir.path().join("run");
    let out = o3()
        .args(["optimize", "--quiet", "--json", "--simulate"])
        .arg(&sim)
        .arg("--out")
        .arg(&run)
        .arg("--db")
        .arg(dir.path().join("o3.db"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    // A kill -9 mid-run: no summary yet, and the journal's last line torn.
    std::fs::remove_file(run.join("summary.json")).unwrap();
    let lines = std::fs::read_to_string(run.join("journal.jsonl"))
        .unwrap()
        .lines()
        .count();
    let mut j = std::fs::OpenOptions::new()
        .append(true)
        .open(run.join("journal.jsonl"))
        .unwrap();
    std::io::Write::write_all(&mut j, b"{\"key\":\"{\\\"stage\\\":\\\"co").unwrap();
    let rep = o3()
        .arg("report")
        .arg(&run)
        .arg("--out")
        .arg(dir.path().join("r"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&rep.stderr);
    assert_eq!(rep.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("journal.jsonl line {}: truncated", lines + 1)),
        "{stderr}"
    );
    assert!(stderr.contains("no summary.json"), "{stderr}");
    let md = std::fs::read_to_string(dir.path().join("r/report.md")).unwrap();
    assert!(md.contains("## Context search") && md.contains("plots/context-decode.svg"));
    assert!(md.contains(&format!("{lines} in the journal")), "{md}");
    assert!(md.contains("## Problems reading the run"));
    // A simulated run has no traces: said, not drawn.
    assert!(!md.contains("plots/memory-server.svg"));
    assert!(
        !dir.path().join("r/report.html").exists(),
        "HTML only with --html"
    );
}

#[test]
fn bad_input_is_one_line_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let out = o3().arg("report").arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.contains("no run.json") && e.contains("o3 optimize --out"),
        "{e}"
    );

    std::fs::write(dir.path().join("run.json"), "{ not json").unwrap();
    let out = o3().arg("report").arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.contains("run.json"), "{e}");
}

/// A simulated run whose journal's last line was cut by a full disk inside the "è" (C3 A8) of a
/// model path, as a live probe's line holds it (its full result names the model file): the
/// report skips that line with one notice naming the file, the line and the bytes dropped, and
/// `--resume` drops the fragment and runs that probe again, nothing else. Then files of the
/// wrong kind or type refuse the report with one line: journal.jsonl a directory, summary.json
/// whose `presets` is not an array.
#[test]
#[allow(clippy::too_many_lines)] // one scenario end to end, each step asserted in order
fn a_journal_cut_inside_a_character_and_files_of_the_wrong_kind() {
    let dir = tempfile::tempdir().unwrap();
    let sim = dir.path().join("sim.json");
    std::fs::write(&sim, "{}").unwrap();
    let run = dir.path().join("run");
    let out = o3()
        .args(["optimize", "--quiet", "--json", "--simulate"])
        .arg(&sim)
        .arg("--out")
        .arg(&run)
        .arg("--db")
        .arg(dir.path().join("o3.db"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let total = last_json(&out)["probes"]["total"].as_u64().unwrap();
    let jpath = run.join("journal.jsonl");
    let whole = std::fs::read(&jpath).unwrap();
    assert_eq!(whole.iter().filter(|&&b| b == b'\n').count() as u64, total);
    // The last probe's line replaced by a cut one.
    let last = whole[..whole.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .unwrap()
        + 1;
    let fragment = b"{\"key\":\"x\",\"raw\":{\"model\":\"/models/mod\xC3";
    let mut cut = whole[..last].to_vec();
    cut.extend_from_slice(fragment);
    std::fs::write(&jpath, &cut).unwrap();

    let report = |out: &str| {
        o3().arg("report")
            .arg(&run)
            .arg("--out")
            .arg(dir.path().join(out))
            .output()
            .unwrap()
    };
    let rep = report("r1");
    let stderr = String::from_utf8_lossy(&rep.stderr);
    assert_eq!(rep.status.code(), Some(0), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "o3 report: {}: journal.jsonl line {total}: truncated last line: {} bytes without a \
             newline (a write interrupted by a kill or a full disk) (skipped)\n",
            run.display(),
            fragment.len()
        )
    );

    let out = o3()
        .args(["optimize", "--quiet", "--json", "--resume"])
        .arg(&run)
        .output()
        .unwrap();
    let r = last_json(&out);
    assert_eq!(out.status.code(), Some(0), "{r}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "o3: warning: {}: dropped its last {} bytes, a line without a newline that is not a \
             whole record (a write interrupted by a kill or a full disk); that probe runs again",
            jpath.display(),
            fragment.len()
        )),
        "{stderr}"
    );
    assert_eq!(r["probes"]["from_journal"].as_u64(), Some(total - 1));
    assert_eq!(r["probes"]["ran_now"].as_u64(), Some(1));
    let lines: Vec<Value> = std::fs::read_to_string(&jpath)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as u64, total);
    let rep = report("r2");
    assert_eq!(rep.status.code(), Some(0));
    assert!(
        rep.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&rep.stderr)
    );

    let refused = |want: String| {
        let rep = report("r3");
        let stderr = String::from_utf8_lossy(&rep.stderr);
        assert_eq!(rep.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr, format!("o3: {want}\n"));
        assert!(rep.stdout.is_empty());
    };
    std::fs::rename(&jpath, run.join("journal.moved")).unwrap();
    std::fs::create_dir(&jpath).unwrap();
    refused(format!(
        "{} is a directory, but o3 optimize writes a file of one JSON line per probe there; move \
         it away, or give the directory `o3 optimize --out` wrote",
        jpath.display()
    ));
    std::fs::remove_dir(&jpath).unwrap();
    std::fs::rename(run.join("journal.moved"), &jpath).unwrap();
    let spath = run.join("summary.json");
    std::fs::write(&spath, r#"{"presets": "fast"}"#).unwrap();
    refused(format!(
        "{}: `presets` is a string, not an array of objects; the file is damaged or not written \
         by o3 optimize: move it away to report from the journal, and `o3 optimize --resume DIR` \
         writes it again",
        spath.display()
    ));
}
