//! One unit, one spelling, one stream: each value on the command line in its own unit (a
//! `--*-percent` flag takes 1 to 100, a fraction a share of one or a percent with its sign; a
//! value that fits the other unit is refused, exit status 2, with the value meant).

// A test may unwrap: a panic there is the failure, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use common::o3;

/// `o3 probe ARGS` that clap refuses: (exit status, stderr).
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let out = o3()
        .args(["probe", "--model", "m.gguf", "--ctx", "512"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.stdout.is_empty());
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_percent_flag_refuses_a_fraction_and_names_the_percent_meant() {
    let (code, err) = refused(&["--safety", "--max-ram-percent", "0.5"]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(
        err.trim_end(),
        "o3: invalid value '0.5' for '--max-ram-percent <PERCENT>': a percent from 1 to 100 \
         (did you mean 50?) (see `o3 probe --help`)"
    );
    let (code, err) = refused(&["--safety", "--max-ram-percent", "250"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("': a percent from 1 to 100 (see"), "{err}");
}

#[test]
fn a_fraction_flag_refuses_a_bare_percent_and_takes_one_with_its_sign() {
    let (code, err) = refused(&["--fill", "90"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(
            "'--fill <FRACTION>': a fraction from 0.05 to 1 (or a percent such as 90%) \
             (did you mean 90%?)"
        ),
        "{err}"
    );
    // `90%` is read: the run goes past the flags (and stops at the model file, which is
    // missing), so the error is no longer about --fill.
    let (_, err) = refused(&["--fill", "90%", "--backend", "llama-server"]);
    assert!(!err.contains("--fill"), "{err}");
}
