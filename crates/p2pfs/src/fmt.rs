//! Text formatting for the shells: tables, sizes, rates and progress bars.

use std::time::Duration;

use indicatif::{HumanBytes, HumanDuration};
use p2pfs_peer::{DownloadState, Progress};

/// Left-aligned columns separated by two spaces, sized by character count.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            s.push_str(cell);
            if i + 1 < cells.len() {
                s.push_str(&" ".repeat(w - cell.chars().count() + 2));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = vec![line(header.to_vec())];
    out.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    out.join("\n")
}

/// A size in binary units, e.g. `1.50 MiB`.
pub(crate) fn size(bytes: u64) -> String {
    HumanBytes(bytes).to_string()
}

/// A count in words: `1 chunk`, `512 chunks` (nouns whose plural adds an s).
pub(crate) fn count(n: impl Into<u64>, noun: &str) -> String {
    match n.into() {
        1 => format!("1 {noun}"),
        n => format!("{n} {noun}s"),
    }
}

/// A rate, e.g. `12.00 MiB/s`.
pub(crate) fn rate(bytes_per_sec: f64) -> String {
    format!("{}/s", HumanBytes(bytes_per_sec.max(0.0) as u64))
}

/// One line describing a download: bar, percent, bytes, rate, ETA, sources.
pub(crate) fn progress_line(id: u64, name: &str, p: &Progress, width: usize) -> String {
    let frac = if p.bytes_total == 0 {
        1.0
    } else {
        p.bytes_done as f64 / p.bytes_total as f64
    };
    let filled = ((frac * width as f64).round() as usize).min(width);
    let bar = format!("{}{}", "#".repeat(filled), "-".repeat(width - filled));
    let tail = match &p.state {
        DownloadState::Running => {
            let eta = if p.rate > 0.0 {
                let left = p.bytes_total.saturating_sub(p.bytes_done) as f64 / p.rate;
                format!(
                    "ETA {}",
                    HumanDuration(Duration::from_secs_f64(left.min(1e7)))
                )
            } else {
                "ETA --".into()
            };
            let plural = if p.sources == 1 { "" } else { "s" };
            format!("{}  {eta}  {} source{plural}", rate(p.rate), p.sources)
        }
        DownloadState::Done => {
            format!("done in {:.2}s ({})", p.elapsed.as_secs_f64(), rate(p.rate))
        }
        DownloadState::Failed(why) => format!("failed: {why}"),
        DownloadState::Cancelled => "cancelled".into(),
    };
    format!(
        "#{id} {name} [{bar}] {:>3.0}% {}/{}  {tail}",
        frac * 100.0,
        size(p.bytes_done),
        size(p.bytes_total)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_of_one_are_singular() {
        assert_eq!(count(0u32, "chunk"), "0 chunks");
        assert_eq!(count(1u32, "chunk"), "1 chunk");
        assert_eq!(count(4096u64, "chunk"), "4096 chunks");
        assert_eq!(count(1u64, "peer"), "1 peer");
    }

    #[test]
    fn table_aligns_by_characters() {
        let t = table(
            &["name", "size"],
            &[
                vec!["ü.txt".into(), "1".into()],
                vec!["a".into(), "22".into()],
            ],
        );
        assert_eq!(t, "name   size\nü.txt  1\na      22");
    }
}
