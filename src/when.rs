//! Times and durations: RFC 3339 timestamps in the file, `WHEN` and `DURATION` arguments.

use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use std::fmt;

/// An instant: a record's creation or expiry, or the "now" a command compares them with.
pub type Timestamp = OffsetDateTime;

/// The current time in UTC, against which expiries are judged.
pub fn now() -> Timestamp {
    OffsetDateTime::now_utc()
}

/// Strict RFC 3339 (fractional seconds and offsets accepted).
pub fn parse_timestamp(text: &[u8]) -> Option<Timestamp> {
    if let Some(t) = parse_canonical(text) {
        return Some(t);
    }
    let text = std::str::from_utf8(text).ok()?;
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

/// The form this tool writes, `2026-05-05T14:23:00Z`, read without the general parser (a
/// file of a million records holds a million of them). It accepts a subset of what the
/// general parser accepts, with the same value; anything else goes to the general parser.
fn parse_canonical(text: &[u8]) -> Option<Timestamp> {
    let t: &[u8; 20] = text.try_into().ok()?;
    if (t[4], t[7], t[10], t[13], t[16], t[19]) != (b'-', b'-', b'T', b':', b':', b'Z') {
        return None;
    }
    let number = |from: usize, to: usize| {
        t[from..to].iter().try_fold(0u16, |n, &b| {
            b.is_ascii_digit().then(|| n * 10 + u16::from(b - b'0'))
        })
    };
    let (year, month, day) = (number(0, 4)?, number(5, 7)?, number(8, 10)?);
    let (hour, minute, second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
    if second > 59 {
        return None; // a leap second: the general parser knows what to do
    }
    let month = time::Month::try_from(u8::try_from(month).ok()?).ok()?;
    let date = time::Date::from_calendar_date(i32::from(year), month, u8::try_from(day).ok()?);
    let time = time::Time::from_hms(
        u8::try_from(hour).ok()?,
        u8::try_from(minute).ok()?,
        u8::try_from(second).ok()?,
    );
    Some(time::PrimitiveDateTime::new(date.ok()?, time.ok()?).assume_utc())
}

/// The form this tool writes: UTC, whole seconds, `Z`.
pub fn format_timestamp(t: Timestamp) -> String {
    // An instant beyond year 9999 in UTC (`9999-12-31T23:30:00-01:00`) keeps its offset.
    let t = t.checked_to_offset(time::UtcOffset::UTC).unwrap_or(t);
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Why a `DURATION` argument was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BadDuration {
    Malformed,
    /// Well formed, but past what a `Duration` holds (`u64` seconds).
    TooLong,
}

/// `90d`, `12h`, `30m`, `45s`, `2w`, `500ms`, or a combination such as `1h30m`. One too
/// long to count is refused like a malformed one, never a panic: every product and sum
/// here is checked.
fn duration(text: &str) -> std::result::Result<Duration, BadDuration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(BadDuration::Malformed);
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(BadDuration::Malformed);
        }
        // All digits: the only way to fail is a number past u64.
        let number: u64 = rest[..digits].parse().map_err(|_| BadDuration::TooLong)?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit_secs: u64 = match &rest[..unit_len] {
            "ms" => 0,
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            _ => return Err(BadDuration::Malformed),
        };
        let part = match unit_secs {
            0 => Some(Duration::from_millis(number)),
            _ => number.checked_mul(unit_secs).map(Duration::from_secs),
        };
        total = part
            .and_then(|part| total.checked_add(part))
            .ok_or(BadDuration::TooLong)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Why a `DURATION`, `WHEN` or lock timeout argument was refused; each holds the argument
/// as given, which the message quotes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WhenError {
    /// A `DURATION` (`--grace`, a `--lock-timeout` that is not a number) does not parse.
    NotADuration(String),
    /// A `DURATION` parses but is more than a `Duration` can hold.
    DurationTooLong(String),
    /// A `WHEN` duration is too long to count, or lands past the year 9999.
    TooFarInTheFuture(String),
    /// A `WHEN` is neither an RFC 3339 time nor a duration.
    NeitherTimeNorDuration(String),
    /// A `--lock-timeout` given as a plain number is not a finite count of seconds below 10^9.
    LockTimeoutOutOfRange(String),
}

impl fmt::Display for WhenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WhenError::NotADuration(text) => write!(
                f,
                "{text:?} is not a duration: use a number and a unit (s, m, h, d, w or ms), or \
                 several in a row, e.g. 90d, 12h, 1h30m; there are no months or years (30d, 365d)"
            ),
            WhenError::DurationTooLong(text) => write!(f, "{text:?} is too long a duration"),
            WhenError::TooFarInTheFuture(text) => write!(f, "{text:?} is too far in the future"),
            WhenError::NeitherTimeNorDuration(text) => write!(
                f,
                "{text:?} is neither an RFC 3339 time (2026-05-05T14:23:00Z) nor a duration (90d, 12h, 30m)"
            ),
            WhenError::LockTimeoutOutOfRange(text) => write!(
                f,
                "{text:?} is out of range: give 0 to 999999999 seconds, or a duration such as 10s"
            ),
        }
    }
}

impl std::error::Error for WhenError {}

/// A `DURATION` argument: `90d`, `12h`, `30m`, `45s`, `2w`, `500ms`, or a combination such as
/// `1h30m`; the error says what is wrong.
pub fn parse_duration(text: &str) -> Result<Duration, WhenError> {
    duration(text).map_err(|why| match why {
        BadDuration::Malformed => WhenError::NotADuration(text.to_string()),
        BadDuration::TooLong => WhenError::DurationTooLong(text.to_string()),
    })
}

/// `WHEN`: an RFC 3339 time, or a duration from `now`. Either must land in a year this
/// tool can write (up to 9999); anything past it is refused.
pub fn parse_when(text: &str, now: Timestamp) -> Result<Timestamp, WhenError> {
    When::parse(text)?.resolve(now)
}

/// A `WHEN` argument as given, before "now" is known: parsed when the command line is, and
/// [resolved](When::resolve) against the one "now" a command stamps everything with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct When {
    /// As given, for messages about it.
    text: String,
    at: WhenAt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WhenAt {
    Time(Timestamp),
    FromNow(Duration),
}

impl When {
    /// Refused with what is wrong when `text` is neither a time nor a duration.
    pub fn parse(text: &str) -> Result<When, WhenError> {
        let at = match parse_timestamp(text.trim().as_bytes()) {
            Some(t) => WhenAt::Time(t),
            None => match duration(text) {
                Ok(duration) => WhenAt::FromNow(duration),
                Err(BadDuration::TooLong) => {
                    return Err(WhenError::TooFarInTheFuture(text.to_string()));
                }
                Err(BadDuration::Malformed) => {
                    return Err(WhenError::NeitherTimeNorDuration(text.to_string()));
                }
            },
        };
        Ok(When {
            text: text.to_owned(),
            at,
        })
    }

    /// The time meant, a duration counted from `now`.
    pub fn resolve(&self, now: Timestamp) -> Result<Timestamp, WhenError> {
        match self.at {
            WhenAt::Time(t) => Ok(t),
            WhenAt::FromNow(duration) => time::Duration::try_from(duration)
                .ok()
                .and_then(|duration| now.checked_add(duration))
                .ok_or_else(|| WhenError::TooFarInTheFuture(self.text.clone())),
        }
    }

    /// The argument as given.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// The lock timeout: a duration, or a plain number of seconds.
pub fn parse_lock_timeout(text: &str) -> Result<Duration, WhenError> {
    if let Ok(secs) = text.trim().parse::<f64>() {
        if secs.is_finite() && (0.0..1e9).contains(&secs) {
            return Ok(Duration::from_secs_f64(secs));
        }
        return Err(WhenError::LockTimeoutOutOfRange(text.to_string()));
    }
    parse_duration(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn general(text: &str) -> Option<Timestamp> {
        OffsetDateTime::parse(text, &Rfc3339).ok()
    }

    #[test]
    fn canonical_fast_path_agrees_with_the_general_parser() {
        for text in [
            "2026-05-05T14:23:00Z",
            "2024-02-29T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "2026-00-10T00:00:00Z",
            "2026-13-10T00:00:00Z",
            "2026-01-00T00:00:00Z",
            "2026-01-10T24:00:00Z",
            "2026-01-10T23:60:00Z",
            "2026-12-31T23:59:60Z",
            "2026-06-30T23:59:60Z",
            "2026-01-10t00:00:00Z",
            "2026-01-10T00:00:00z",
            "2026-01-10T00:00:0aZ",
            "+026-01-10T00:00:00Z",
        ] {
            assert_eq!(parse_timestamp(text.as_bytes()), general(text), "{text}");
            if let Some(fast) = parse_canonical(text.as_bytes()) {
                assert_eq!(Some(fast), general(text), "{text}");
                assert_eq!(fast.offset(), time::UtcOffset::UTC);
            }
        }
    }

    proptest! {
        #[test]
        fn canonical_fast_path_never_disagrees(
            y in 0u32..10000, mo in 0u32..14, d in 0u32..33, h in 0u32..26, mi in 0u32..62,
            s in 0u32..62,
        ) {
            let text = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z");
            prop_assert_eq!(parse_timestamp(text.as_bytes()), general(&text));
        }
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("90d").unwrap(),
            Duration::from_secs(90 * 86400)
        );
        assert_eq!(
            parse_duration("12h").unwrap(),
            Duration::from_secs(12 * 3600)
        );
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        for bad in ["", "d", "10", "10x", "-5m", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        // Too long to count: refused, never a panic (`+=` on Duration panics on overflow).
        for long in [
            "18446744073709551615s1000ms",
            "18446744073709551615s1s",
            "9999999999999999999h",
            "31000000000000w",
            "99999999999999999999ms",
            "18446744073709551615ms18446744073709551615s",
        ] {
            let err = parse_duration(long).unwrap_err();
            assert!(err.to_string().contains("too long"), "{long}: {err}");
            assert!(parse_when(long, now()).is_err(), "{long}");
        }
    }

    #[test]
    fn timestamps() {
        for good in [
            "2026-05-05T14:23:00Z",
            "2026-05-05T14:23:00.123456Z",
            "2026-05-05T16:23:00+02:00",
        ] {
            assert!(parse_timestamp(good.as_bytes()).is_some(), "{good}");
        }
        for bad in [
            "2026-05-05",
            "yesterday",
            "2026-05-05T14:23:00",
            "2026-13-05T14:23:00Z",
        ] {
            assert!(parse_timestamp(bad.as_bytes()).is_none(), "{bad}");
        }
        let t = parse_timestamp(b"2026-05-05T16:23:00.5+02:00").unwrap();
        assert_eq!(format_timestamp(t), "2026-05-05T14:23:00Z");
    }

    #[test]
    fn when_is_time_or_duration() {
        let now = parse_timestamp(b"2026-01-01T00:00:00Z").unwrap();
        assert_eq!(
            format_timestamp(parse_when("1d", now).unwrap()),
            "2026-01-02T00:00:00Z"
        );
        assert_eq!(
            format_timestamp(parse_when("2027-01-01T00:00:00Z", now).unwrap()),
            "2027-01-01T00:00:00Z"
        );
        assert!(parse_when("soon", now).is_err());
    }
}
