//! Reading a child's output (or any byte stream) as text lines without
//! trusting it: invalid UTF-8 is replaced, and a line that never ends
//! cannot make the reader buffer more than its bound.

use bytes::BytesMut;
use tokio_util::codec::Decoder;

/// Lines: split at `\n`, decoded lossily (a child may print anything); a
/// line longer than `max` bytes is cut there and the rest of it, up to its
/// newline, skipped, so never more than about `max` bytes are buffered.
#[derive(Debug)]
pub struct Lines {
    max: usize,
    skipping: bool,
}

impl Lines {
    /// Lines of at most `max` bytes.
    pub fn new(max: usize) -> Lines {
        Lines {
            max,
            skipping: false,
        }
    }
}

impl Decoder for Lines {
    type Item = String;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> std::io::Result<Option<String>> {
        loop {
            if let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line = buf.split_to(i + 1);
                if std::mem::take(&mut self.skipping) {
                    continue;
                }
                return Ok(Some(String::from_utf8_lossy(&line[..i]).into_owned()));
            }
            if buf.len() <= self.max {
                return Ok(None);
            }
            if self.skipping {
                buf.clear();
                return Ok(None);
            }
            self.skipping = true;
            let line = buf.split_to(self.max);
            return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> std::io::Result<Option<String>> {
        if let Some(line) = self.decode(buf)? {
            return Ok(Some(line));
        }
        let rest = buf.split();
        Ok((!rest.is_empty() && !self.skipping)
            .then(|| String::from_utf8_lossy(&rest).into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 64;

    #[test]
    fn output_is_split_lossily_and_a_runaway_line_is_cut_not_buffered() {
        let mut codec = Lines::new(MAX);
        let mut buf = BytesMut::from(&b"one\n\xff two\n"[..]);
        assert_eq!(
            codec.decode(&mut buf).ok().flatten().as_deref(),
            Some("one")
        );
        assert_eq!(
            codec.decode(&mut buf).ok().flatten().as_deref(),
            Some("\u{fffd} two")
        );
        buf.extend_from_slice(&[b'x'; MAX + 10]);
        let cut = codec.decode(&mut buf).ok().flatten().unwrap_or_default();
        assert_eq!(cut.len(), MAX);
        buf.extend_from_slice(&[b'x'; 3 * MAX]);
        assert_eq!(codec.decode(&mut buf).ok().flatten(), None);
        assert!(buf.is_empty(), "the rest of a runaway line is not kept");
        buf.extend_from_slice(b"xx\nnext\ntail");
        assert_eq!(
            codec.decode(&mut buf).ok().flatten().as_deref(),
            Some("next")
        );
        assert_eq!(
            codec.decode_eof(&mut buf).ok().flatten().as_deref(),
            Some("tail")
        );
    }
}
