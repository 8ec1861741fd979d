//! A graphql-transport-ws client over a real websocket.

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::TestServer;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The upgrade request for `/graphql/ws`, speaking graphql-transport-ws,
/// with `headers` added.
pub fn request(
    s: &TestServer,
    headers: &[(&'static str, String)],
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    request_at(&s.base, headers)
}

/// As [`request`], to the server at `base` (`http://host:port`).
pub fn request_at(
    base: &str,
    headers: &[(&'static str, String)],
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = format!("{}/graphql/ws", base.replace("http://", "ws://"))
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    for (k, v) in headers {
        req.headers_mut().insert(*k, v.parse().unwrap());
    }
    req
}

/// The next text message as JSON; `None` once the socket is closed.
pub async fn next_text(ws: &mut Ws) -> Option<Value> {
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
    None
}

/// A websocket whose `connection_init` with `token` was acknowledged.
pub async fn with_token(s: &TestServer, token: &str) -> Ws {
    with_token_at(&s.base, token).await
}

/// As [`with_token`], to the server at `base` (`http://host:port`).
pub async fn with_token_at(base: &str, token: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(request_at(base, &[]))
        .await
        .unwrap();
    ws.send(Message::text(format!(
        r#"{{"type":"connection_init","payload":{{"authorization":"Bearer {token}"}}}}"#
    )))
    .await
    .unwrap();
    assert_eq!(next_text(&mut ws).await.unwrap()["type"], "connection_ack");
    ws
}

/// Reads until the server closes the socket: the close code, and the
/// JSON messages that came before it.
pub async fn until_closed(socket: &mut Ws) -> (Option<u16>, Vec<Value>) {
    let mut texts = Vec::new();
    // A bound for a broken server, not a measurement.
    let read = async {
        while let Some(msg) = socket.next().await {
            match msg {
                Ok(Message::Text(t)) => texts.push(serde_json::from_str(&t).unwrap()),
                Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    };
    let code = tokio::time::timeout(std::time::Duration::from_secs(60), read)
        .await
        .expect("the server closes the socket");
    (code, texts)
}
