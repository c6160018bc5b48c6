//! Push admission: at most `PUSH_CONCURRENT_MAX` pushes are decoded and
//! stored at once; the others wait for a turn with their bodies undecoded,
//! and past the wait they are answered `busy` (503), which a till retries.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tillsync_core::IdGen;
use tillsync_hub::{AppState, HubStorage, SqliteHub};
use tower::ServiceExt;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn push(token: &str) -> Request<Body> {
    Request::post("/v1/push")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"device_time_ms":0,"changes":[]}"#))
        .unwrap()
}

#[tokio::test]
async fn a_push_waits_for_a_turn_and_past_the_wait_is_answered_busy() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Arc::new(SqliteHub::open(dir.path(), IdGen::from_u64(11)).unwrap());
    let (tenant, _admin) = hub.create_tenant("Admission", false, now()).unwrap();
    let store = hub.create_store(tenant, "Main", now()).unwrap();
    let (code, _) = hub.create_enrol_code(tenant, store, now(), 60_000).unwrap();
    let token = hub.enrol(&code, "Till", now()).unwrap().token;
    let state = AppState::new(hub.clone()).with_push_limit(1, 300);
    let slots = state.push_slots.clone();
    let router = tillsync_hub::app(state);

    // The one turn is taken: the push waits out its 300 ms, then is busy.
    let held = slots.clone().try_acquire_owned().unwrap();
    let started = Instant::now();
    let resp = router.clone().oneshot(push(&token)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() >= Duration::from_millis(300), "it waited for a turn first");
    let body: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["code"], "busy", "{body}");

    // Other routes do not wait for a push's turn.
    let health = router.clone().oneshot(Request::get("/healthz").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);

    // A turn freed while a push waits: that push goes through.
    let waiting = tokio::spawn(router.clone().oneshot(push(&token)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "the push waits while every turn is taken");
    drop(held);
    let resp = waiting.await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(slots.available_permits(), 1, "the turn is given back after the answer");
}
