//! The caller's deadline, from the `grpc-timeout` header.

use std::time::Duration;

use tonic::metadata::MetadataMap;

/// The timeout the caller set, if any. Malformed values are ignored, as gRPC
/// servers do: the call then runs under the gateway's own timeout.
pub(crate) fn caller_timeout(metadata: &MetadataMap) -> Option<Duration> {
    parse(metadata.get("grpc-timeout")?.to_str().ok()?)
}

/// Parses `TimeoutValue TimeoutUnit` as the gRPC HTTP/2 spec defines it: at most
/// eight ASCII digits, then one of H M S m u n.
fn parse(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_parses() {
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse("7n"), Some(Duration::from_nanos(7)));
    }

    #[test]
    fn malformed_values_are_ignored() {
        for bad in ["", "m", "123456789m", "1x", "-1S", "1.5S", "１S", "5"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
