//! Schedule windows: parsing `days` and `hours`, evaluating a window at an instant, and
//! resolving the capacity at a time.

use serde::{Deserialize, Serialize};

use super::raw::RawWindow;
use super::{CapacityConfig, FieldError};

/// A schedule window: on `days`, between `hours` in `timezone`, run `capacity` runners.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScheduleWindow {
    /// As written, e.g. `mon-fri`.
    pub days: String,
    /// As written, e.g. `07:00-19:00`.
    pub hours: String,
    /// IANA time zone name.
    pub timezone: String,
    /// Runners during the window.
    pub capacity: u32,
    #[serde(skip)]
    day_set: [bool; 7],
    #[serde(skip)]
    start_minute: u16,
    #[serde(skip)]
    end_minute: u16,
    #[serde(skip)]
    tz: jiff::tz::TimeZone,
}

impl ScheduleWindow {
    /// The window as written in `raw`, with its parsed days, minutes and time zone.
    pub(super) fn new(
        raw: RawWindow,
        day_set: [bool; 7],
        (start_minute, end_minute): (u16, u16),
        tz: jiff::tz::TimeZone,
    ) -> Self {
        ScheduleWindow {
            days: raw.days,
            hours: raw.hours,
            timezone: raw.timezone,
            capacity: raw.capacity,
            day_set,
            start_minute,
            end_minute,
            tz,
        }
    }
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn day_index(s: &str) -> Result<usize, String> {
    DAYS.iter()
        .position(|d| *d == s)
        .ok_or_else(|| format!("{s:?} is not a day (mon, tue, wed, thu, fri, sat, sun)"))
}

pub(super) fn parse_days(s: &str) -> Result<[bool; 7], String> {
    let mut set = [false; 7];
    let s = s.trim().to_ascii_lowercase();
    if s == "daily" || s == "*" {
        return Ok([true; 7]);
    }
    for part in s.split(',').map(str::trim) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day_index(a.trim())?, day_index(b.trim())?);
                let mut d = a;
                loop {
                    set[d] = true;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => set[day_index(part)?] = true,
        }
    }
    Ok(set)
}

fn parse_hhmm(s: &str, allow_24: bool) -> Result<u16, String> {
    let bad = || format!("{s:?} is not a time HH:MM");
    let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m >= 60 || h > 24 || (h == 24 && (m != 0 || !allow_24)) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

pub(super) fn parse_hours(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s.split_once('-').ok_or_else(|| {
        format!("{s:?} is not a range HH:MM-HH:MM (start inclusive, end exclusive)")
    })?;
    let (start, end) = (parse_hhmm(a, false)?, parse_hhmm(b, true)?);
    if start == end {
        return Err(format!("{s:?} is empty: start and end are the same"));
    }
    Ok((start, end))
}

/// The IANA time zone `name`.
pub(super) fn parse_timezone(name: &str) -> Result<jiff::tz::TimeZone, String> {
    jiff::tz::TimeZone::get(name)
        .map_err(|_| format!("{name:?} is not an IANA time zone (e.g. Europe/Warsaw, UTC)"))
}

impl ScheduleWindow {
    /// Whether the window covers the instant, in wall-clock time of its time zone.
    /// A window that crosses midnight belongs to the day it starts on.
    pub fn contains(&self, at: jiff::Timestamp) -> bool {
        let local = at.to_zoned(self.tz.clone());
        let day = local.weekday().to_monday_zero_offset() as usize;
        let minute = local.hour() as u16 * 60 + local.minute() as u16;
        if self.start_minute < self.end_minute {
            self.day_set[day] && (self.start_minute..self.end_minute).contains(&minute)
        } else {
            let yesterday = (day + 6) % 7;
            (self.day_set[day] && minute >= self.start_minute)
                || (self.day_set[yesterday] && minute < self.end_minute)
        }
    }
}

/// Where a capacity came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// Number of runners (= instances).
    pub desired: u32,
    /// Human-readable origin: `default`, `--capacity`, `schedule mon-fri 07:00-19:00 Europe/Warsaw`.
    pub source: String,
}

impl CapacityConfig {
    /// The capacity at `at`: `--capacity` > first matching schedule window > default.
    pub fn resolve(
        &self,
        at: jiff::Timestamp,
        explicit: Option<u32>,
    ) -> Result<Capacity, FieldError> {
        if let Some(n) = explicit {
            if n > self.max {
                return Err(FieldError {
                    field: "--capacity".to_owned(),
                    message: format!(
                        "{n} is above capacity.max ({}); raise capacity.max in the config first",
                        self.max
                    ),
                });
            }
            return Ok(Capacity {
                desired: n,
                source: "--capacity".to_owned(),
            });
        }
        Ok(self
            .schedule
            .iter()
            .find(|w| w.contains(at))
            .map(|w| Capacity {
                desired: w.capacity,
                source: format!("schedule {} {} {}", w.days, w.hours, w.timezone),
            })
            .unwrap_or_else(|| Capacity {
                desired: self.default,
                source: "default".to_owned(),
            }))
    }
}
