//! How the CLI writes: standard output through [`print`], which turns a closed pipe
//! (`meshwarden get -o json | head -1`) into a quiet exit instead of a panic, and text a
//! server or proxy chose (NACK messages, names) through [`terminal_safe`], so control
//! characters are shown escaped instead of reaching the operator's terminal.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write;

/// Exit status after stdout was closed early: 128 + SIGPIPE, what a shell reports for a
/// program killed by the signal, so `set -o pipefail` scripts still see the output was cut.
pub const BROKEN_PIPE_EXIT: u8 = 141;

/// The reader of standard output went away; nothing more can be shown.
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed")]
pub struct BrokenPipe;

/// Writes `text` to standard output and flushes it. A closed pipe is [`BrokenPipe`], which
/// `main` turns into a quiet exit with [`BROKEN_PIPE_EXIT`]; other write errors are errors.
pub fn print(text: &str) -> anyhow::Result<()> {
    write_to(&mut std::io::stdout().lock(), text)
}

/// [`print`] with a newline.
pub fn println(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    write_to(&mut out, text)?;
    write_to(&mut out, "\n")
}

fn write_to(out: &mut impl Write, text: &str) -> anyhow::Result<()> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(BrokenPipe.into()),
        Err(e) => Err(anyhow::Error::new(e).context("cannot write to standard output")),
    }
}

/// Writes a line to standard error, ignoring failures: there is nowhere left to report
/// them.
pub fn eprintln(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err
        .write_all(text.as_bytes())
        .and_then(|()| err.write_all(b"\n"));
}

/// Whether `err` is (or was caused by) a closed standard output.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<BrokenPipe>())
}

/// `text` with control characters (C0 including newline and tab, DEL, C1) and Unicode
/// bidirectional overrides written as escapes (`\u{1b}`, `\n`), so text from a server or a
/// proxy cannot move the cursor, recolour or reorder the operator's terminal. Plain text is
/// returned as is.
pub fn terminal_safe(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            let _ = write!(out, "{}", c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// [`terminal_safe`] for multi-line text: each line escaped, the line breaks kept.
pub fn terminal_safe_lines(text: &str) -> String {
    text.split_inclusive('\n')
        .map(|line| match line.strip_suffix('\n') {
            Some(body) => format!("{}\n", terminal_safe(body)),
            None => terminal_safe(line).into_owned(),
        })
        .collect()
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert!(matches!(terminal_safe("plain ünïcode"), Cow::Borrowed(_)));
        assert_eq!(
            terminal_safe("bad \u{1b}[31mred\u{1b}[0m\r\nnext\u{9b}2J\u{7f}\u{202e}"),
            r"bad \u{1b}[31mred\u{1b}[0m\r\nnext\u{9b}2J\u{7f}\u{202e}"
        );
        assert_eq!(terminal_safe("tab\there"), r"tab\there");
        assert_eq!(terminal_safe_lines("a\n\u{1b}b\nc"), "a\n\\u{1b}b\nc");
    }

    #[test]
    fn a_closed_pipe_is_its_own_error() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let err = write_to(&mut Closed, "x").unwrap_err();
        assert!(is_broken_pipe(&err));
        assert!(is_broken_pipe(&err.context("while printing")));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }
}
