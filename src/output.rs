//! Text for people: a command's results on standard output, and long text cut to one line.
//!
//! A reader that goes away early (`gymforge aup ... | head`) closes the pipe: the rest of the
//! output is not wanted, which is not an error. gymforge keeps SIGPIPE ignored (it writes to
//! child processes' pipes and must not be killed by one), so a closed stdout shows up as a
//! `BrokenPipe` write error, on which `println!` would panic.

use std::io::{ErrorKind, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once stdout's reader has gone; later output is discarded.
static CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes `text` and a newline to stdout. A closed pipe ends the output quietly: this and every
/// later call return `Ok` without writing. Other write errors are returned.
pub fn print_line(text: &str) -> std::io::Result<()> {
    write_line(&mut std::io::stdout().lock(), text, &CLOSED)
}

/// At most `max` characters of `text` on one line (whitespace runs become one space).
pub fn one_line(text: &str, max: usize) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match joined.char_indices().nth(max) {
        Some((at, _)) => format!("{}...", &joined[..at]),
        None => joined,
    }
}

fn write_line(out: &mut impl Write, text: &str, closed: &AtomicBool) -> std::io::Result<()> {
    if closed.load(Ordering::Relaxed) {
        return Ok(());
    }
    let result = out.write_all(text.as_bytes()).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush());
    match result {
        Err(e) if e.kind() == ErrorKind::BrokenPipe => {
            closed.store(true, Ordering::Relaxed);
            Ok(())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose reader has gone after `room` bytes.
    struct ClosedAfter {
        room: usize,
        written: Vec<u8>,
        attempts: usize,
    }

    impl Write for ClosedAfter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.attempts += 1;
            if self.room == 0 {
                return Err(ErrorKind::BrokenPipe.into());
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.written.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_ends_the_output_quietly() {
        let closed = AtomicBool::new(false);
        let mut out = ClosedAfter { room: 4, written: Vec::new(), attempts: 0 };
        write_line(&mut out, "ab", &closed).unwrap();
        assert_eq!(out.written, b"ab\n");
        write_line(&mut out, "cdef", &closed).unwrap();
        assert!(closed.load(Ordering::Relaxed));
        let attempts = out.attempts;
        write_line(&mut out, "gh", &closed).unwrap();
        assert_eq!(out.attempts, attempts, "nothing is written after the pipe closed");
        assert_eq!(out.written, b"ab\nc");
    }

    #[test]
    fn other_write_errors_are_returned() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::from(rustix::io::Errno::NOSPC))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let closed = AtomicBool::new(false);
        assert!(write_line(&mut Full, "x", &closed).is_err());
        assert!(!closed.load(Ordering::Relaxed));
    }

    #[test]
    fn one_line_truncates() {
        assert_eq!(one_line("a\n b\tc", 10), "a b c");
        assert_eq!(one_line("abcdef", 3), "abc...");
    }
}
