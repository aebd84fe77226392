//! gRPC's wire vocabulary, shared by the Shoal host and the guest SDK so that both
//! read and write statuses and deadlines the same way: the status codes, which of
//! them are a server's failure and which may be retried, the spec's mapping from an
//! HTTP status, the `grpc-timeout` header and `grpc-message`'s percent-encoding.
//! No dependencies; builds for the host and for `wasm32-wasip2`.

use std::time::Duration;

/// A gRPC status code (the `grpc-status` value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Code {
    /// Success.
    Ok = 0,
    /// The caller cancelled the call.
    Cancelled = 1,
    /// An error with no better code.
    Unknown = 2,
    /// The request is wrong, whatever the server's state.
    InvalidArgument = 3,
    /// The deadline passed before the call completed.
    DeadlineExceeded = 4,
    /// What the request names does not exist.
    NotFound = 5,
    /// What the request would create exists.
    AlreadyExists = 6,
    /// The caller may not do this.
    PermissionDenied = 7,
    /// A quota or limit was reached.
    ResourceExhausted = 8,
    /// The system is not in a state to do this.
    FailedPrecondition = 9,
    /// Aborted, typically by a concurrent change.
    Aborted = 10,
    /// Past a valid range.
    OutOfRange = 11,
    /// No such method here.
    Unimplemented = 12,
    /// The server broke an invariant (a fault).
    Internal = 13,
    /// The server did not take the call; it may be sent again.
    Unavailable = 14,
    /// Unrecoverable loss or corruption of data.
    DataLoss = 15,
    /// The caller's credentials are missing or invalid.
    Unauthenticated = 16,
}

impl Code {
    /// Every code, by number.
    pub const ALL: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// The code of a number; an unknown number is `UNKNOWN`, as the spec says.
    pub fn from_number(number: u32) -> Code {
        usize::try_from(number)
            .ok()
            .and_then(|index| Self::ALL.get(index).copied())
            .unwrap_or(Code::Unknown)
    }

    /// The code of a `grpc-status` value (its bytes, surrounding spaces allowed).
    pub fn from_value(value: &[u8]) -> Code {
        std::str::from_utf8(value)
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok())
            .map_or(Code::Unknown, Code::from_number)
    }

    /// Its number, as sent in `grpc-status`.
    pub fn number(self) -> u8 {
        self as u8
    }

    /// Its name in the spec's and OpenTelemetry's spelling (`UNAVAILABLE`).
    pub fn name(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// Whether a server that answers with it has failed (counted against it by
    /// metrics, breakers and canaries), as opposed to refusing a client's request.
    /// OpenTelemetry's RPC conventions mark these codes as server errors.
    pub fn is_server_failure(self) -> bool {
        matches!(
            self,
            Code::Unknown
                | Code::DeadlineExceeded
                | Code::Unimplemented
                | Code::Internal
                | Code::Unavailable
                | Code::DataLoss
        )
    }

    /// Whether a call that failed with it may be sent again: `UNAVAILABLE` means the
    /// server did not act on it; any other only for a method its caller declared
    /// idempotent, and only for codes that are about the server, not the request.
    pub fn is_retryable(self, idempotent: bool) -> bool {
        match self {
            Code::Unavailable => true,
            Code::Internal
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted => idempotent,
            _ => false,
        }
    }

    /// The code of an answer made with an HTTP status, after the spec's "HTTP to
    /// gRPC status code mapping", with what Shoal's statuses mean: 500 and 502 are a
    /// service's fault (`INTERNAL`: it may have acted), 503 and 429 a request that
    /// never ran (`UNAVAILABLE`: safe to retry), 504 and 408 a deadline passed.
    pub fn from_http_status(status: u16) -> Code {
        match status {
            200..=299 => Code::Ok,
            400 | 500 | 502 => Code::Internal,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::Unimplemented,
            408 | 504 => Code::DeadlineExceeded,
            413 => Code::ResourceExhausted,
            429 | 503 => Code::Unavailable,
            _ => Code::Unknown,
        }
    }
}

/// A `grpc-timeout` value: 1 to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
pub fn parse_timeout(text: &str) -> Option<Duration> {
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// `budget` as a `grpc-timeout` value, in the finest unit whose amount fits the
/// header's eight digits (rounded up, so a callee never sees less time than is left
/// turned into none, and at most 99,999,999 hours).
pub fn timeout_value(budget: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let nanos = budget.as_nanos();
    let units: [(u128, &str); 6] = [
        (1, "n"),
        (1_000, "u"),
        (1_000_000, "m"),
        (1_000_000_000, "S"),
        (60_000_000_000, "M"),
        (3_600_000_000_000, "H"),
    ];
    let (amount, unit) = units
        .iter()
        .map(|(per, unit)| (nanos.div_ceil(*per), *unit))
        .find(|(amount, _)| *amount <= MAX)
        .unwrap_or((MAX, "H"));
    format!("{amount}{unit}")
}

/// `message` percent-encoded for `grpc-message`: printable ASCII but `%` stays as
/// it is, every other byte (UTF-8 included) becomes `%XX`.
pub fn encode_message(message: &str) -> String {
    let mut encoded = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// A `grpc-message` decoded: `%XX` back to its byte (a `%` not followed by two hex
/// digits stays as it is), invalid UTF-8 replaced.
pub fn decode_message(encoded: &str) -> String {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = bytes
            .get(index + 1..index + 3)
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match (bytes[index], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                index += 3;
            }
            (byte, _) => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_numbers_are_unknown() {
        for code in Code::ALL {
            assert_eq!(Code::from_value(code.number().to_string().as_bytes()), code);
            assert_eq!(Code::from_number(u32::from(code.number())), code);
        }
        assert_eq!(Code::from_value(b" 14 "), Code::Unavailable);
        assert_eq!(Code::from_value(b"17"), Code::Unknown);
        assert_eq!(Code::from_value(b"x"), Code::Unknown);
        assert_eq!(Code::from_number(u32::MAX), Code::Unknown);
        assert_eq!(Code::Unavailable.name(), "UNAVAILABLE");
    }

    #[test]
    fn only_codes_about_the_server_are_retried_and_unavailable_always() {
        assert!(Code::Unavailable.is_retryable(false));
        assert!(!Code::Internal.is_retryable(false));
        assert!(Code::Internal.is_retryable(true));
        for code in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::PermissionDenied,
            Code::Ok,
        ] {
            assert!(!code.is_retryable(true), "{code:?}");
        }
        assert!(Code::Internal.is_server_failure());
        assert!(!Code::InvalidArgument.is_server_failure());
    }

    #[test]
    fn http_statuses_map_as_the_spec_says() {
        assert_eq!(Code::from_http_status(404), Code::Unimplemented);
        assert_eq!(Code::from_http_status(503), Code::Unavailable);
        assert_eq!(Code::from_http_status(504), Code::DeadlineExceeded);
        assert_eq!(Code::from_http_status(500), Code::Internal);
        assert_eq!(Code::from_http_status(403), Code::PermissionDenied);
        assert_eq!(Code::from_http_status(418), Code::Unknown);
    }

    #[test]
    fn timeouts_parse_and_round_up_into_eight_digits() {
        assert_eq!(parse_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout("1H"), Some(Duration::from_secs(3600)));
        for bad in ["2s", "", "m", "123456789m", "-1S", "1.5S"] {
            assert_eq!(parse_timeout(bad), None, "{bad}");
        }
        assert_eq!(timeout_value(Duration::from_nanos(1500)), "1500n");
        assert_eq!(timeout_value(Duration::from_millis(250)), "250000u");
        assert_eq!(timeout_value(Duration::from_secs(200)), "200000m");
        assert_eq!(timeout_value(Duration::from_secs(400_000)), "400000S");
        let sent = timeout_value(Duration::from_nanos(100_000_001));
        let back = parse_timeout(&sent).expect("parses");
        assert!(back >= Duration::from_nanos(100_000_001), "{sent}");
    }

    #[test]
    fn messages_are_percent_encoded_both_ways() {
        assert_eq!(encode_message("50% off\n"), "50%25 off%0A");
        assert_eq!(encode_message("café"), "caf%C3%A9");
        assert_eq!(decode_message("caf%C3%A9 %zz 50%"), "café %zz 50%");
        assert_eq!(
            decode_message(&encode_message("100% sure\n")),
            "100% sure\n"
        );
    }
}
