//! The one output layer: chosen once from `--output`, every command prints through it,
//! as text for people or as one JSON document for tools (`status` also as OpenMetrics
//! text). Progress goes to stderr, and only in text mode, so stdout holds exactly one
//! document in JSON mode (`autoscale`: one JSON line per tick).

use std::io::Write;
use std::process::ExitCode;

use serde::Serialize;

use super::args::Format;
use super::CliError;
use crate::plan::Plan;

/// Where and how results are printed.
#[derive(Debug, Clone, Copy)]
pub(super) struct Output {
    json: bool,
    prometheus: bool,
    /// JSON documents on one line each.
    lines: bool,
}

impl Output {
    /// For `--output`.
    pub(super) fn new(format: Format) -> Output {
        Output {
            json: format == Format::Json,
            prometheus: format == Format::Prometheus,
            lines: false,
        }
    }

    /// `--output prometheus`: the command prints OpenMetrics text (`status` only).
    pub(super) fn prometheus(&self) -> bool {
        self.prometheus
    }

    /// OpenMetrics text (`--output prometheus`), as it is.
    pub(super) fn metrics(&self, text: &str) -> Result<(), CliError> {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()?;
        Ok(())
    }

    /// The same, with every JSON document on ONE line: for a command whose results are a
    /// stream (`autoscale`: a line per tick's decision, and one per change's outcome).
    pub(super) fn json_lines(self) -> Output {
        Output {
            lines: true,
            ..self
        }
    }

    /// The command's result: `json` as a document, or `text` as it is.
    pub(super) fn result<T: Serialize>(
        &self,
        json: &T,
        text: impl FnOnce() -> String,
    ) -> Result<(), CliError> {
        if self.json {
            print_json(json, self.lines)
        } else {
            print!("{}", text());
            Ok(())
        }
    }

    /// Text for people on stdout, in text mode only.
    pub(super) fn text(&self, text: impl FnOnce() -> String) {
        if !self.json && !self.prometheus {
            print!("{}", text());
        }
    }

    /// A progress line on stderr, in text mode only.
    pub(super) fn progress(&self, line: impl FnOnce() -> String) {
        if !self.json && !self.prometheus {
            eprintln!("{}", line());
        }
    }

    /// A plan: its JSON view, or the terraform-style text.
    pub(super) fn plan(&self, plan: &Plan) -> Result<(), CliError> {
        let view = plan.view();
        self.result(&view, || view.to_string())
    }

    /// A plan before its approval: shown in text mode only (JSON mode prints the outcome).
    pub(super) fn plan_text(&self, plan: &Plan) {
        self.text(|| plan.view().to_string());
    }

    /// Reports a failure (on stderr; in JSON mode also as a document on stdout) and
    /// returns the exit code 1.
    pub(super) fn fail(&self, e: &CliError) -> ExitCode {
        eprintln!("error: {e}");
        if self.json {
            let _ = print_json(&e.to_json(), self.lines);
        }
        ExitCode::from(1)
    }
}

fn print_json<T: Serialize + ?Sized>(value: &T, one_line: bool) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    if one_line {
        serde_json::to_writer(&mut out, value).map_err(std::io::Error::from)?;
    } else {
        serde_json::to_writer_pretty(&mut out, value).map_err(std::io::Error::from)?;
    }
    writeln!(out)?;
    // A stream's consumer sees each line when it is written.
    out.flush()?;
    Ok(())
}
