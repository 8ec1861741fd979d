//! The GraphiQL playground at `/playground`: the page and every file it
//! loads are compiled into the binary, so it works without internet.
//! `playground/assets/README.md` says where each vendored file comes from.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use crate::error::Error;

/// The page's policy: scripts only from this server (the page has no inline
/// script), requests only to it. GraphiQL adds `<style>` elements of its
/// own, hence `'unsafe-inline'` for styles; its CSS carries its fonts and
/// icons as `data:` URLs. `ws:`/`wss:` because browsers before CSP 3 do not
/// count the websocket to the same host as `'self'`.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; font-src 'self' data:; img-src 'self' data:; \
     connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// For files whose name carries their version: their content never changes.
const FOREVER: &str = "public, max-age=31536000, immutable";
/// For our own script, which changes between releases under one name.
const REVALIDATE: &str = "no-cache";

/// A file the page loads, served at `/playground/assets/<name>`.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    cache_control: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $content_type:expr, $cache_control:expr) => {
        Asset {
            name: $name,
            content_type: $content_type,
            cache_control: $cache_control,
            body: include_bytes!(concat!("../playground/assets/", $name)),
        }
    };
}

const ASSETS: &[Asset] = &[
    asset!("graphiql-3.8.3.min.js", JAVASCRIPT, FOREVER),
    asset!("graphiql-3.8.3.min.css", CSS, FOREVER),
    asset!("react-18.3.1.production.min.js", JAVASCRIPT, FOREVER),
    asset!("react-dom-18.3.1.production.min.js", JAVASCRIPT, FOREVER),
    asset!("playground.js", JAVASCRIPT, REVALIDATE),
];

/// `GET /playground` and `GET /playground/assets/{name}`.
pub fn routes() -> Router {
    Router::new()
        .route("/playground", get(page))
        .route("/playground/assets/{name}", get(asset))
}

async fn page() -> Response {
    (
        [
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            nosniff(),
        ],
        Html(include_str!("../playground/index.html")),
    )
        .into_response()
}

async fn asset(Path(name): Path<String>) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return Error::not_found("playground asset", name).into_response();
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static(asset.cache_control),
            ),
            nosniff(),
        ],
        asset.body,
    )
        .into_response()
}

/// Browsers take each file as the type it is served with, never a guess.
fn nosniff() -> (HeaderName, HeaderValue) {
    (
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    )
}
