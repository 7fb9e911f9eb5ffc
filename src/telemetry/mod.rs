//! OpenTelemetry traces (docs/configuration.md, `[telemetry]`): where a
//! request stands in its trace (`context`), and the export of its spans,
//! off the request path (`export`). The spans themselves are built from a
//! settled request by `server::traces`.

pub mod context;
pub mod export;

pub use context::TraceCtx;
pub use export::{Attr, Exporter, Job, SpanOut};
