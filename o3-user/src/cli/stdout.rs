//! A subcommand's result on stdout. A reader that stops early (`o3 history | head -1`) closes
//! the pipe: the rest of the result is dropped quietly, where `println!` would panic.

use std::fmt::Display;
use std::io::{ErrorKind, Write};

/// Writes `text` to stdout. A closed pipe is not an error: the reader has what it wanted.
pub(super) fn print(text: &str) -> Result<(), (anyhow::Error, i32)> {
    write_to(&mut std::io::stdout().lock(), text.as_bytes())
}

/// `text` and a newline.
pub(super) fn line(text: impl Display) -> Result<(), (anyhow::Error, i32)> {
    print(&format!("{text}\n"))
}

/// Writes `bytes` to `out`, a closed pipe being the end of the output, not an error.
pub(super) fn write_to(out: &mut impl Write, bytes: &[u8]) -> Result<(), (anyhow::Error, i32)> {
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != ErrorKind::BrokenPipe => Err((
            anyhow::Error::new(e).context("cannot write the result to stdout"),
            1,
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose reader has gone, or that fails otherwise.
    struct Failing(ErrorKind);

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(self.0.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_ends_the_output_and_other_failures_are_errors() {
        assert!(write_to(&mut Failing(ErrorKind::BrokenPipe), b"x").is_ok());
        let (e, code) = write_to(&mut Failing(ErrorKind::StorageFull), b"x").unwrap_err();
        assert_eq!(code, 1);
        assert!(e.to_string().contains("cannot write the result to stdout"));
    }
}
