//! The outcome enums: how an attempt ended and how a request ended. A leaf:
//! the chain sets them, metrics label by them, the accountant settles by them.

/// The `outcome` label of cascade_attempts_total.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    Success,
    Timeout,
    RateLimited,
    UpstreamError,
    ConnectError,
    ClientError,
    /// A 200 whose answer a tier with `validate_output` refused.
    InvalidOutput,
    /// A hedged attempt that lost the race, stopped at once.
    Cancelled,
}

impl AttemptOutcome {
    pub const ALL: [AttemptOutcome; 8] = [
        AttemptOutcome::Success,
        AttemptOutcome::Timeout,
        AttemptOutcome::RateLimited,
        AttemptOutcome::UpstreamError,
        AttemptOutcome::ConnectError,
        AttemptOutcome::ClientError,
        AttemptOutcome::InvalidOutput,
        AttemptOutcome::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Success => "success",
            AttemptOutcome::Timeout => "timeout",
            AttemptOutcome::RateLimited => "rate_limited",
            AttemptOutcome::UpstreamError => "upstream_error",
            AttemptOutcome::ConnectError => "connect_error",
            AttemptOutcome::ClientError => "client_error",
            AttemptOutcome::InvalidOutput => "invalid_output",
            AttemptOutcome::Cancelled => "cancelled",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The `outcome` label of cascade_requests_total.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestOutcome {
    Success,
    Failed,
    ClientError,
    Rejected,
}

impl RequestOutcome {
    /// How many values there are (metrics keep one slot per value).
    pub const COUNT: usize = 4;

    pub fn as_str(self) -> &'static str {
        match self {
            RequestOutcome::Success => "success",
            RequestOutcome::Failed => "failed",
            RequestOutcome::ClientError => "client_error",
            RequestOutcome::Rejected => "rejected",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

const _: () = assert!(RequestOutcome::Rejected as usize + 1 == RequestOutcome::COUNT);
