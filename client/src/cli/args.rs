//! Argument helpers shared by the commands: durations, tags, times, and reading or
//! writing files where `-` means stdin/stdout.

use std::io::{Read, Write};
use std::time::Duration;

use prost_types::Timestamp;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::error::CliError;

/// Parses a duration such as `45s`, `30m`, `1h`, `7d`, `2w` or `1h30m`.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty duration; use e.g. 30m, 1h or 7d".into());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => {
                return Err(format!(
                    "bad duration {input:?}: unknown unit {c:?} (s, m, h, d, w)"
                ));
            }
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("bad duration {input:?}: a number must come before {c:?}"))?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("duration {input:?} is too long"))?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(format!(
            "bad duration {input:?}: {digits} needs a unit (s, m, h, d, w)"
        ));
    }
    Ok(Duration::from_secs(total))
}

/// Parses a `key=value` tag (the value may be empty).
pub fn parse_tag(input: &str) -> Result<(String, String), String> {
    match input.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("bad tag {input:?}: expected key=value")),
    }
}

/// Parses an RFC 3339 time such as `2025-01-31T12:00:00Z`.
pub fn parse_rfc3339(input: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(input.trim(), &Rfc3339).map_err(|e| {
        format!("bad time {input:?} ({e}); expected RFC 3339, e.g. 2025-01-31T12:00:00Z")
    })
}

/// Parses `--since`: a duration back from now (`1h`) or an RFC 3339 time.
pub fn parse_since(input: &str, now: OffsetDateTime) -> Result<OffsetDateTime, String> {
    if let Ok(t) = OffsetDateTime::parse(input.trim(), &Rfc3339) {
        return Ok(t);
    }
    let back = parse_duration(input)?;
    now.checked_sub(time::Duration::try_from(back).map_err(|e| e.to_string())?)
        .ok_or_else(|| format!("--since {input:?} reaches before the year -9999"))
}

/// Parses `--valid-to`: an RFC 3339 time, or `+DURATION` from now (`+1h`, `+30d`).
pub fn parse_valid_to(input: &str, now: OffsetDateTime) -> Result<OffsetDateTime, String> {
    let Some(ahead) = input.trim().strip_prefix('+') else {
        return parse_rfc3339(input);
    };
    let ahead = parse_duration(ahead)?;
    now.checked_add(time::Duration::try_from(ahead).map_err(|e| e.to_string())?)
        .ok_or_else(|| format!("--valid-to {input:?} reaches past the year 9999"))
}

/// A time as a protobuf timestamp.
pub fn to_timestamp(t: OffsetDateTime) -> Timestamp {
    Timestamp {
        seconds: t.unix_timestamp(),
        nanos: i32::try_from(t.nanosecond()).unwrap_or(0),
    }
}

/// A protobuf timestamp as RFC 3339 in UTC (`None` if unset or out of range).
pub fn format_timestamp(ts: Option<&Timestamp>) -> Option<String> {
    let ts = ts?;
    let nanos = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
    let t = OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()?;
    t.format(&Rfc3339).ok()
}

/// Reads a whole input file; `-` reads stdin.
pub fn read_input(what: &str, path: &str) -> Result<Vec<u8>, CliError> {
    if path == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| CliError::io(&format!("cannot read {what} from"), "stdin", e))?;
        return Ok(buf);
    }
    std::fs::read(path).map_err(|e| CliError::io(&format!("cannot read {what}"), path, e))
}

/// Writes bytes to a file; `-` writes them to stdout.
pub fn write_output(what: &str, path: &str, bytes: &[u8]) -> Result<(), CliError> {
    if path == "-" {
        let mut out = std::io::stdout().lock();
        return out
            .write_all(bytes)
            .and_then(|()| out.flush())
            .map_err(|e| CliError::io(&format!("cannot write {what} to"), "stdout", e));
    }
    std::fs::write(path, bytes).map_err(|e| CliError::io(&format!("cannot write {what}"), path, e))
}

/// Prints text to stdout. A closed pipe (`hsmctl ... | head`) is not an error.
pub fn print(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(CliError::io("cannot write to", "stdout", e))
        }
        _ => Ok(()),
    }
}

/// Prints one line to stdout.
pub fn println(line: impl std::fmt::Display) -> Result<(), CliError> {
    print(&format!("{line}\n"))
}

/// Prints a JSON value as one line.
pub fn print_json(value: &serde_json::Value) -> Result<(), CliError> {
    println(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("45s"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(1_209_600)));
        for bad in ["", "h", "10", "5y", "1.5h", "-1h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn valid_to_is_a_time_or_a_duration_ahead() {
        let now = parse_rfc3339("2025-01-31T12:00:00Z").unwrap();
        let at = |s: &str| parse_valid_to(s, now).map(|t| t.format(&Rfc3339).unwrap());
        assert_eq!(at("+1h").as_deref(), Ok("2025-01-31T13:00:00Z"));
        assert_eq!(at("+30m").as_deref(), Ok("2025-01-31T12:30:00Z"));
        assert_eq!(
            at("2026-02-01T00:00:00Z").as_deref(),
            Ok("2026-02-01T00:00:00Z")
        );
        for bad in ["1h", "+", "+1x", "tomorrow", "+99999999999999w"] {
            assert!(parse_valid_to(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn since_is_a_duration_back_or_a_time() {
        let now = parse_rfc3339("2025-01-31T12:00:00Z").unwrap();
        assert_eq!(
            parse_since("1h", now).unwrap(),
            parse_rfc3339("2025-01-31T11:00:00Z").unwrap()
        );
        assert_eq!(
            parse_since("2025-01-01T00:00:00Z", now).unwrap(),
            parse_rfc3339("2025-01-01T00:00:00Z").unwrap()
        );
        assert!(parse_since("yesterday", now).is_err());
    }

    #[test]
    fn timestamps_round_trip() {
        let t = parse_rfc3339("2025-01-31T12:00:00.5+01:00").unwrap();
        let ts = to_timestamp(t);
        assert_eq!(ts.nanos, 500_000_000);
        assert_eq!(
            format_timestamp(Some(&ts)).as_deref(),
            Some("2025-01-31T11:00:00.5Z")
        );
        assert_eq!(format_timestamp(None), None);
    }

    #[test]
    fn tags() {
        assert_eq!(
            parse_tag("team=payments"),
            Ok(("team".into(), "payments".into()))
        );
        assert_eq!(parse_tag("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_tag("empty="), Ok(("empty".into(), String::new())));
        assert!(parse_tag("=v").is_err());
        assert!(parse_tag("novalue").is_err());
    }
}
