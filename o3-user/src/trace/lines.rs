//! JSON Lines files read as bytes: traces and the optimizer's journal. The file is split at
//! each `\n` before anything is decoded, so a file cut anywhere (a kill or a full disk while a
//! line was written, inside a multi-byte UTF-8 character too) still gives every whole line; the
//! readers decide what to do with a damaged line and with a last line that has no newline.

use thiserror::Error;

/// A line that is not UTF-8 text: where its first invalid byte is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("not UTF-8 text (an invalid byte at column {column})")]
pub struct NotUtf8 {
    /// 1-based byte column.
    pub column: usize,
}

/// One line of a JSON Lines file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line<'a> {
    /// 1-based.
    pub number: usize,
    /// Where its first byte is in the file.
    pub offset: u64,
    /// Its bytes, without the newline.
    pub bytes: &'a [u8],
    /// Whether a newline ends it; only the last line of a file can lack one.
    pub terminated: bool,
}

impl<'a> Line<'a> {
    /// Empty or only ASCII whitespace.
    pub fn is_blank(&self) -> bool {
        self.bytes.iter().all(u8::is_ascii_whitespace)
    }

    /// The line as text, or where it stops being UTF-8.
    pub fn text(&self) -> Result<&'a str, NotUtf8> {
        std::str::from_utf8(self.bytes).map_err(|e| NotUtf8 {
            column: e.valid_up_to() + 1,
        })
    }
}

/// The lines of `data`, in order. A file ending with a newline has no empty line after it.
pub fn split(data: &[u8]) -> impl Iterator<Item = Line<'_>> {
    let mut offset = 0u64;
    data.split_inclusive(|&b| b == b'\n')
        .enumerate()
        .map(move |(i, chunk)| {
            let at = offset;
            offset += chunk.len() as u64;
            let (bytes, terminated) = match chunk.strip_suffix(b"\n") {
                Some(bytes) => (bytes, true),
                None => (chunk, false),
            };
            Line {
                number: i + 1,
                offset: at,
                bytes,
                terminated,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(data: &[u8]) -> Vec<(usize, u64, &[u8], bool)> {
        split(data)
            .map(|l| (l.number, l.offset, l.bytes, l.terminated))
            .collect()
    }

    #[test]
    fn lines_with_their_offsets_and_whether_a_newline_ends_them() {
        assert_eq!(all(b""), vec![]);
        assert_eq!(all(b"\n"), vec![(1, 0, &b""[..], true)]);
        assert_eq!(
            all(b"{}\n\n{\"a\":1}\n{\"b"),
            vec![
                (1, 0, &b"{}"[..], true),
                (2, 3, &b""[..], true),
                (3, 4, &b"{\"a\":1}"[..], true),
                (4, 12, &b"{\"b"[..], false),
            ]
        );
    }

    /// "è" is C3 A8 in UTF-8: a write cut between the two bytes leaves a line that is not
    /// UTF-8; the whole lines before it are intact.
    #[test]
    fn a_cut_inside_a_multibyte_character_leaves_the_lines_before_it_whole() {
        let text = "{\"model\":\"/m/modèle.gguf\"}\n{\"model\":\"/m/modè";
        let cut = &text.as_bytes()[..text.len() - 1];
        let lines: Vec<Line> = split(cut).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].text(), Ok("{\"model\":\"/m/modèle.gguf\"}"));
        assert!(!lines[1].terminated);
        let e = lines[1].text().unwrap_err();
        assert_eq!(e, NotUtf8 { column: 17 });
        assert_eq!(
            e.to_string(),
            "not UTF-8 text (an invalid byte at column 17)"
        );
        assert!(!lines[1].is_blank());
        assert!(split(b" \t\r\n").next().unwrap().is_blank());
    }
}
