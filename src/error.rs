//! One error type for the whole control plane, mapped once to a GraphQL
//! `extensions.code` and once to an HTTP status with `{"error", "details"}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The result type used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure a client can see. Messages are safe to show; internal
/// details are logged, never returned.
#[derive(Debug, Clone)]
pub enum Error {
    /// Malformed input. `field` names the offending field when known.
    BadRequest {
        message: String,
        field: Option<String>,
    },
    Unauthenticated(String),
    Forbidden(String),
    NotFound(String),
    Conflict(String),
    /// Well-formed but unacceptable (e.g. an idempotency key reused with another body).
    Unprocessable(String),
    RateLimited(String),
    /// A body of a type the endpoint does not take.
    UnsupportedMediaType(String),
    Unavailable(String),
    /// Anything unexpected. The string is for the log only.
    Internal(String),
}

impl Error {
    /// A 400 naming the field that was wrong.
    pub fn field(field: &str, message: impl std::fmt::Display) -> Self {
        Error::BadRequest {
            message: format!("{field}: {message}"),
            field: Some(field.to_string()),
        }
    }

    /// A 400 without a specific field.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Error::BadRequest {
            message: message.into(),
            field: None,
        }
    }

    pub fn not_found(what: &str, id: impl std::fmt::Display) -> Self {
        Error::NotFound(format!("{what} '{id}' not found"))
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Error::Internal(detail.to_string())
    }

    /// The stable machine-readable code, shared by GraphQL and REST.
    pub fn code(&self) -> &'static str {
        match self {
            Error::BadRequest { .. } => "BAD_REQUEST",
            Error::Unauthenticated(_) => "UNAUTHENTICATED",
            Error::Forbidden(_) => "FORBIDDEN",
            Error::NotFound(_) => "NOT_FOUND",
            Error::Conflict(_) => "CONFLICT",
            Error::Unprocessable(_) => "UNPROCESSABLE",
            Error::RateLimited(_) => "RATE_LIMITED",
            Error::UnsupportedMediaType(_) => "UNSUPPORTED_MEDIA_TYPE",
            Error::Unavailable(_) => "UNAVAILABLE",
            Error::Internal(_) => "INTERNAL",
        }
    }

    pub fn status(&self) -> StatusCode {
        status_for_code(self.code())
    }

    /// The message a client may see.
    pub fn public_message(&self) -> String {
        match self {
            Error::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                "Internal server error".to_string()
            }
            other => other.message().to_string(),
        }
    }

    /// The message as written; for `Internal`, the log-only detail.
    // No `Display` on purpose: async-graphql would then convert this type
    // through its message alone and drop `extensions.code`.
    pub fn message(&self) -> &str {
        match self {
            Error::BadRequest { message, .. } => message,
            Error::Unauthenticated(m)
            | Error::Forbidden(m)
            | Error::NotFound(m)
            | Error::Conflict(m)
            | Error::Unprocessable(m)
            | Error::RateLimited(m)
            | Error::UnsupportedMediaType(m)
            | Error::Unavailable(m)
            | Error::Internal(m) => m,
        }
    }

    /// The message for an operator at the command line, where internal
    /// detail helps and no client is listening.
    pub fn public_message_for_cli(&self) -> String {
        self.message().to_string()
    }

    fn details(&self) -> Value {
        match self {
            Error::BadRequest {
                field: Some(field), ..
            } => json!({ "field": field }),
            _ => Value::Null,
        }
    }

    /// The REST body: `{"error": "...", "details": ...}`.
    pub fn body(&self) -> Value {
        json!({ "error": self.public_message(), "details": self.details() })
    }
}

/// The `code` of an error answer with this status.
pub fn code_for_status(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "BAD_REQUEST",
        StatusCode::UNAUTHORIZED => "UNAUTHENTICATED",
        StatusCode::FORBIDDEN => "FORBIDDEN",
        StatusCode::NOT_FOUND => "NOT_FOUND",
        StatusCode::METHOD_NOT_ALLOWED => "METHOD_NOT_ALLOWED",
        StatusCode::CONFLICT => "CONFLICT",
        StatusCode::PAYLOAD_TOO_LARGE => "PAYLOAD_TOO_LARGE",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "UNSUPPORTED_MEDIA_TYPE",
        StatusCode::UNPROCESSABLE_ENTITY => "UNPROCESSABLE",
        StatusCode::TOO_MANY_REQUESTS => "RATE_LIMITED",
        StatusCode::SERVICE_UNAVAILABLE => "UNAVAILABLE",
        s if s.is_server_error() => "INTERNAL",
        _ => "BAD_REQUEST",
    }
}

/// HTTP status for an `extensions.code`; unknown codes are server errors.
pub fn status_for_code(code: &str) -> StatusCode {
    match code {
        "BAD_REQUEST" | "BAD_USER_INPUT" | "QUERY_TOO_LARGE" => StatusCode::BAD_REQUEST,
        "UNAUTHENTICATED" => StatusCode::UNAUTHORIZED,
        "FORBIDDEN" => StatusCode::FORBIDDEN,
        "NOT_FOUND" => StatusCode::NOT_FOUND,
        "CONFLICT" => StatusCode::CONFLICT,
        "UNPROCESSABLE" => StatusCode::UNPROCESSABLE_ENTITY,
        "RATE_LIMITED" => StatusCode::TOO_MANY_REQUESTS,
        "UNSUPPORTED_MEDIA_TYPE" => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UNAVAILABLE" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), axum::Json(self.body())).into_response();
        if resp.status() == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        resp
    }
}

/// Whether a store error means the store cannot be reached right now (down,
/// restarting, out of connections) rather than that the statement failed.
pub fn store_unreachable(err: &sea_orm::DbErr) -> bool {
    use sea_orm::{DbErr, RuntimeErr, sqlx};
    let sqlx_down = |e: &sqlx::Error| match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        // SQLSTATE class 08 (connection exception) and 57 (operator
        // intervention: shutting down, starting up, cannot connect now).
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    };
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            sqlx_down(e)
        }
        _ => false,
    }
}

impl From<Error> for async_graphql::Error {
    fn from(err: Error) -> Self {
        let mut ext = async_graphql::ErrorExtensionValues::default();
        ext.set("code", err.code());
        if let Ok(v) = async_graphql::Value::from_json(err.details())
            && v != async_graphql::Value::Null
        {
            ext.set("details", v);
        }
        let mut out = async_graphql::Error::new(err.public_message());
        out.extensions = Some(ext);
        out
    }
}

impl From<sea_orm::DbErr> for Error {
    fn from(err: sea_orm::DbErr) -> Self {
        match err.sql_err() {
            Some(sea_orm::SqlErr::UniqueConstraintViolation(_)) => {
                Error::Conflict("a resource with these identifiers already exists".into())
            }
            Some(sea_orm::SqlErr::ForeignKeyConstraintViolation(_)) => {
                Error::Conflict("a referenced resource no longer exists".into())
            }
            _ if store_unreachable(&err) => {
                tracing::warn!(error = %err, "the store is unreachable or saturated");
                Error::Unavailable("the store is unreachable or too busy; try again shortly".into())
            }
            _ => Error::Internal(err.to_string()),
        }
    }
}

impl From<sea_orm::TransactionError<Error>> for Error {
    fn from(err: sea_orm::TransactionError<Error>) -> Self {
        match err {
            sea_orm::TransactionError::Connection(db) => db.into(),
            sea_orm::TransactionError::Transaction(e) => e,
        }
    }
}

/// A GraphQL-shaped error body (`{"errors": [{message, extensions: {code}}]}`)
/// for the GraphQL endpoints, over HTTP and websocket alike.
pub fn graphql_error(err: &Error) -> Value {
    json!({ "errors": [{ "message": err.public_message(), "extensions": { "code": err.code() } }] })
}
