//! Plain-text tables and ages, kubectl style.

use super::output::terminal_safe;
use std::time::{SystemTime, UNIX_EPOCH};

/// Renders rows under `header`, columns left-aligned and separated by three spaces. Cells
/// are shown with control characters escaped ([`terminal_safe`]): they hold names and
/// versions a server or proxy chose.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            row.iter()
                .map(|cell| terminal_safe(cell).into_owned())
                .collect()
        })
        .collect();
    let rows = rows.as_slice();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                out.push_str("   ");
            }
            out.push_str(cell);
            out.extend(std::iter::repeat_n(
                ' ',
                w.saturating_sub(cell.chars().count()),
            ));
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(&mut header.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// Time since `unix_ms` as `45s`, `12m`, `5h`, `3d`; `-` when unknown.
pub fn age(unix_ms: i64) -> String {
    if unix_ms <= 0 {
        return "-".into();
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let secs = (now - unix_ms).max(0) / 1000;
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let out = render(
            &["KIND", "NAME"],
            &[
                vec!["TracePolicy".into(), "a".into()],
                vec!["X".into(), "long-name".into()],
            ],
        );
        assert_eq!(
            out,
            "KIND          NAME\nTracePolicy   a\nX             long-name\n"
        );
    }

    #[test]
    fn ages_are_compact() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        assert_eq!(age(now - 5_000), "5s");
        assert_eq!(age(now - 600_000), "10m");
        assert_eq!(age(now - 3 * 86_400_000), "3d");
        assert_eq!(age(0), "-");
    }
}
