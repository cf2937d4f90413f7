//! The job trace: CSV rows `submitted_at,duration_s[,labels][,repository]`, ISO-8601 times
//! with an offset (`2026-03-02T09:15:00Z`), durations in seconds. Labels are separated by
//! `;` or spaces (or commas inside a quoted field). An optional header row names the
//! columns. A bad row is refused with its line number.

use std::path::Path;

/// One pipeline step of the trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// When it was submitted, in milliseconds since the Unix epoch.
    pub submitted_ms: i64,
    /// How long it runs once started, in milliseconds.
    pub duration_ms: i64,
    /// The labels its `runs-on` asks for (empty: any runner of the fleet).
    pub labels: Vec<String>,
    /// The repository it runs in (empty: not given).
    pub repository: String,
}

/// A trace that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The file cannot be read.
    #[error("--trace {path}: {source}")]
    Io {
        /// The path given.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A row is malformed.
    #[error("--trace {path}: line {line}: {message}")]
    Row {
        /// The path given.
        path: String,
        /// 1-based line number.
        line: u64,
        /// What is wrong, naming the column.
        message: String,
    },
    /// No step at all.
    #[error("--trace {path}: no steps (rows are submitted_at,duration_s[,labels][,repository])")]
    Empty {
        /// The path given.
        path: String,
    },
}

/// The longest step bbfleet simulates: Bitbucket stops a step after 12 hours at most.
const MAX_DURATION_S: f64 = 12.0 * 3600.0;

/// Reads the trace at `path`, sorted by submission (stable for equal times).
pub fn read(path: &Path) -> Result<Vec<Step>, TraceError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| TraceError::Io {
        path: shown.clone(),
        source,
    })?;
    parse(&bytes).map_err(|e| match e {
        ParseError::Row { line, message } => TraceError::Row {
            path: shown.clone(),
            line,
            message,
        },
        ParseError::Empty => TraceError::Empty { path: shown },
    })
}

/// A parse failure, before the path is known.
#[derive(Debug, PartialEq)]
pub(super) enum ParseError {
    Row { line: u64, message: String },
    Empty,
}

/// Parses trace text.
pub(super) fn parse(bytes: &[u8]) -> Result<Vec<Step>, ParseError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(bytes);
    let mut steps = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        let line = reader.position().line();
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let line = e.position().map_or(line, |p| p.line());
                return Err(ParseError::Row {
                    line,
                    message: e.to_string(),
                });
            }
        }
        let line = record.position().map_or(line, |p| p.line());
        if steps.is_empty() && record.get(0) == Some("submitted_at") {
            continue;
        }
        steps.push(row(&record).map_err(|message| ParseError::Row { line, message })?);
    }
    if steps.is_empty() {
        return Err(ParseError::Empty);
    }
    steps.sort_by_key(|s| s.submitted_ms);
    Ok(steps)
}

fn row(r: &csv::StringRecord) -> Result<Step, String> {
    if !(2..=4).contains(&r.len()) {
        return Err(format!(
            "{} column(s); a row is submitted_at,duration_s[,labels][,repository]",
            r.len()
        ));
    }
    let at = &r[0];
    let submitted: jiff::Timestamp = at.parse().map_err(|_| {
        format!(
            "submitted_at: {at:?} is not an ISO-8601 time with an offset (2026-03-02T09:15:00Z)"
        )
    })?;
    let d = &r[1];
    let duration: f64 = d
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v > 0.0 && *v <= MAX_DURATION_S)
        .ok_or_else(|| {
            format!(
                "duration_s: {d:?} is not a number of seconds above 0 and at most 43200 (12 hours)"
            )
        })?;
    let labels = r
        .get(2)
        .unwrap_or("")
        .split([';', ',', ' '])
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    Ok(Step {
        submitted_ms: submitted.as_millisecond(),
        duration_ms: (duration * 1000.0).round() as i64,
        labels,
        repository: r.get(3).unwrap_or("").to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_with_and_without_labels_and_a_header() {
        let text = "submitted_at,duration_s,labels,repository\n\
                    2026-03-02T09:00:10Z,60,self.hosted;linux,web\n\
                    # a comment\n\
                    2026-03-02T09:00:00+01:00,1.5\n\
                    2026-03-02T09:00:20Z,30,\"self.hosted,linux\"\n";
        let steps = parse(text.as_bytes()).unwrap();
        assert_eq!(steps.len(), 3);
        // +01:00 is an hour earlier: sorted first.
        assert_eq!(steps[0].duration_ms, 1500);
        assert!(steps[0].labels.is_empty());
        assert_eq!(steps[1].labels, ["self.hosted", "linux"]);
        assert_eq!(steps[1].repository, "web");
        assert_eq!(steps[2].labels, ["self.hosted", "linux"]);
        assert_eq!(steps[2].submitted_ms - steps[1].submitted_ms, 10_000);
    }

    #[test]
    fn bad_rows_name_their_line_and_column() {
        let cases = [
            (
                "2026-03-02T09:00:00Z,60\n2026-03-02 9am,60\n",
                2,
                "submitted_at",
            ),
            ("2026-03-02T09:00:00Z,0\n", 1, "duration_s"),
            ("2026-03-02T09:00:00Z,abc\n", 1, "duration_s"),
            ("2026-03-02T09:00:00Z,50000\n", 1, "duration_s"),
            ("2026-03-02T09:00:00Z\n", 1, "1 column(s)"),
            ("2026-03-02T09:00:00Z,1,a,b,c\n", 1, "5 column(s)"),
            ("2026-03-02T09:00:00,60\n", 1, "offset"),
        ];
        for (text, line, says) in cases {
            match parse(text.as_bytes()) {
                Err(ParseError::Row { line: l, message }) => {
                    assert_eq!(l, line, "{text:?}: {message}");
                    assert!(message.contains(says), "{text:?}: {message}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
        assert_eq!(parse(b"submitted_at,duration_s\n"), Err(ParseError::Empty));
    }
}
