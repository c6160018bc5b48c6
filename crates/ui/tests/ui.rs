//! The UI's handlers through `tower::ServiceExt::oneshot`, on real till
//! databases (tempfile + the sample data).

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use serde_json::json;
use tillsync_core::{IdGen, Schema};
use tillsync_node::config::Config;
use tillsync_store::{Identity, Store, sample};
use tillsync_ui::{SyncState, UiState, router, sync_state};
use tower::ServiceExt;
use uuid::Uuid;

const HOST: &str = "127.0.0.1:8441";

fn now() -> u64 {
    1_750_000_000_000
}

struct Till {
    _dir: tempfile::TempDir,
    state: UiState,
    app: Router,
}

fn till() -> Till {
    let dir = tempfile::tempdir().unwrap();
    let identity = Identity {
        tenant_id: Uuid::from_u128(1),
        store_id: Uuid::from_u128(2),
        device_id: Uuid::from_u128(3),
        receipt_prefix: "T1".into(),
        name: "test till".into(),
        mode: "standalone".into(),
    };
    let mut store = Store::create(dir.path(), identity, Schema::standard(), IdGen::from_u64(7)).unwrap();
    sample::load(&mut store, now(), true).unwrap();
    let (tx, _rx) = tokio::sync::mpsc::channel(4);
    let state = UiState::new(store, dir.path().to_path_buf(), Config::default(), tx, now);
    let app = router(state.clone());
    Till { _dir: dir, state, app }
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Resp {
    fn location(&self) -> &str {
        self.headers.get(header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

async fn send(app: &Router, req: Request<Body>) -> Resp {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    Resp { status, headers, body: String::from_utf8_lossy(&body).into_owned() }
}

async fn get(app: &Router, path: &str, cookie: &str) -> Resp {
    let req = Request::get(path).header(header::HOST, HOST).header(header::COOKIE, cookie).body(Body::empty()).unwrap();
    send(app, req).await
}

async fn post(app: &Router, path: &str, cookie: &str, form: &str) -> Resp {
    let req = Request::post(path)
        .header(header::HOST, HOST)
        .header(header::ORIGIN, format!("http://{HOST}"))
        .header(header::COOKIE, cookie)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(form.to_string()))
        .unwrap();
    send(app, req).await
}

/// Signs in and returns the cookie to send back.
async fn sign_in(app: &Router, who: &str, pin: &str) -> String {
    let r = post(app, "/signin", "", &format!("staff={who}&pin={pin}")).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let set = r.headers.get(header::SET_COOKIE).unwrap().to_str().unwrap().to_string();
    set.split(';').next().unwrap().to_string()
}

/// Follows a post's redirect and returns the page (with its messages).
async fn follow(app: &Router, r: &Resp, cookie: &str) -> Resp {
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    get(app, r.location(), cookie).await
}

#[tokio::test]
async fn sign_in_with_a_pin_sets_a_strict_http_only_cookie() {
    let t = till();
    let page = get(&t.app, "/signin", "").await;
    assert_eq!(page.status, StatusCode::OK);
    for s in [r#"<label for="staff">Staff</label>"#, r#"<label for="pin">PIN</label>"#, r#"type="password""#, "Sign in"]
    {
        assert!(page.body.contains(s), "{s} in {}", page.body);
    }
    let wrong = post(&t.app, "/signin", "", "staff=Sam&pin=9999").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.body.contains("wrong staff member or PIN"));
    assert!(wrong.headers.get(header::SET_COOKIE).is_none());

    let r = post(&t.app, "/signin", "", "staff=Sam&pin=1111").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), "/sell");
    let set = r.headers.get(header::SET_COOKIE).unwrap().to_str().unwrap();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
    let cookie = set.split(';').next().unwrap();
    let sell = get(&t.app, "/sell", cookie).await;
    assert_eq!(sell.status, StatusCode::OK);
    assert!(sell.body.contains("Cappuccino") && sell.body.contains("Sam"));

    // Signing out ends the session.
    let out = post(&t.app, "/signout", cookie, "").await;
    assert_eq!(out.location(), "/signin");
    assert_eq!(get(&t.app, "/sell", cookie).await.location(), "/signin");
}

#[tokio::test]
async fn every_page_needs_a_session_and_has_nav_indicator_and_h1() {
    let t = till();
    assert_eq!(get(&t.app, "/sell", "").await.location(), "/signin");
    assert_eq!(get(&t.app, "/", "").await.location(), "/signin");
    let cookie = sign_in(&t.app, "Alex", "1234").await;
    assert_eq!(get(&t.app, "/", &cookie).await.location(), "/sell");
    for path in [
        "/sell",
        "/sales",
        "/stock",
        "/customers",
        "/conflicts",
        "/quarantine",
        "/backups",
        "/devices",
        "/settings",
        "/report",
    ] {
        let p = get(&t.app, path, &cookie).await;
        assert_eq!(p.status, StatusCode::OK, "{path}: {}", p.body);
        assert!(p.body.contains("<h1"), "{path}");
        assert!(p.body.contains(r#"data-testid="sync-indicator""#), "{path}");
        assert!(p.body.contains("Sync now") && p.body.contains("Sign out"), "{path}");
        for name in [
            "Sell",
            "Sales",
            "Stock",
            "Customers",
            "Conflicts",
            "Quarantine",
            "Backups",
            "Devices",
            "Settings",
            "Report",
        ] {
            assert!(p.body.contains(&format!(">{name}</a>")), "{path} nav {name}");
        }
        // A standalone till has no hub: the indicator says Offline.
        assert!(p.body.contains("Offline"), "{path}");
    }
    let c = get(&t.app, "/conflicts", &cookie).await;
    assert!(c.body.contains("No open conflicts"));
    let b = get(&t.app, "/backups", &cookie).await;
    assert!(b.body.contains("No backup destination is configured"));
}

#[tokio::test]
async fn a_cash_sale_through_the_forms_records_the_cashier() {
    let t = till();
    let cookie = sign_in(&t.app, "Sam", "1111").await;
    for _ in 0..2 {
        let r = post(&t.app, "/sell/add", &cookie, "sku=CAPPUCCINO").await;
        assert_eq!(r.location(), "/sell");
    }
    // A scanned SKU adds the product too.
    let r = post(&t.app, "/sell/scan", &cookie, "q=croissant").await;
    assert_eq!(r.location(), "/sell?scan=1");
    let sell = follow(&t.app, &r, &cookie).await;
    assert!(sell.body.contains(r#"aria-label="Cart""#));
    assert!(sell.body.contains("EUR 8.80"), "2 x 3.50 + 1.80: {}", sell.body);
    let checkout = get(&t.app, "/sell/checkout", &cookie).await;
    for s in ["Cash", "Card", "Split", r#"<label for="tendered">Tendered</label>"#, ">Pay</button>"] {
        assert!(checkout.body.contains(s), "{s}");
    }
    let paid = post(&t.app, "/sell/pay", &cookie, "method=cash&tendered=10").await;
    assert_eq!(paid.location(), "/receipt/T1-000001", "{}", paid.body);
    let receipt = follow(&t.app, &paid, &cookie).await;
    assert!(receipt.body.contains(r#"data-testid="receipt""#) && receipt.body.contains("T1-000001"));
    assert!(receipt.body.contains("EUR 1.20"), "change");
    assert!(receipt.body.contains("New sale"));
    let sales = get(&t.app, "/sales", &cookie).await;
    assert!(sales.body.contains("T1-000001"));

    let store = t.state.store.lock().unwrap();
    let (_, sale) = store.sale_by_receipt("T1-000001").unwrap();
    assert_eq!(sale["staff_id"], json!(store.find_staff("Sam").unwrap()));
    assert_eq!(sale["total_minor"], 880);
}

#[tokio::test]
async fn the_cart_answers_htmx_with_a_fragment() {
    let t = till();
    let cookie = sign_in(&t.app, "Sam", "1111").await;
    let req = Request::post("/sell/add")
        .header(header::HOST, HOST)
        .header(header::COOKIE, &cookie)
        .header("hx-request", "true")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("sku=LATTE"))
        .unwrap();
    let r = send(&t.app, req).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.starts_with(r#"<section id="cart""#), "{}", r.body);
    assert!(r.body.contains("Caffe latte") && r.body.contains("Checkout"));
}

#[tokio::test]
async fn card_payments_take_only_the_last_four_digits() {
    let t = till();
    let cookie = sign_in(&t.app, "Jo", "2222").await;
    post(&t.app, "/sell/add", &cookie, "sku=MUG").await;
    let r = post(&t.app, "/sell/pay", &cookie, "method=card&brand=visa&last4=4111111111111111").await;
    assert_eq!(r.location(), "/sell/checkout");
    let page = follow(&t.app, &r, &cookie).await;
    assert!(page.body.contains("last four digits"), "{}", page.body);
    assert!(!page.body.contains("4111111111111111"));
    assert_eq!(t.state.store.lock().unwrap().sales_count().unwrap(), 0);
    let r = post(&t.app, "/sell/pay", &cookie, "method=card&brand=visa&last4=4242").await;
    assert_eq!(r.location(), "/receipt/T1-000001");
    let receipt = follow(&t.app, &r, &cookie).await;
    assert!(receipt.body.contains("****4242"));
    // Split: card part first, cash for the rest with change.
    post(&t.app, "/sell/add", &cookie, "sku=MUG").await;
    let r = post(&t.app, "/sell/pay", &cookie, "method=split&card_amount=5&brand=visa&last4=4242&tendered=10").await;
    assert_eq!(r.location(), "/receipt/T1-000002", "{}", follow(&t.app, &r, &cookie).await.body);
}

#[tokio::test]
async fn refunds_and_voids_need_a_managers_pin() {
    let t = till();
    let cookie = sign_in(&t.app, "Sam", "1111").await;
    post(&t.app, "/sell/add", &cookie, "sku=CAPPUCCINO").await;
    post(&t.app, "/sell/add", &cookie, "sku=CAPPUCCINO").await;
    post(&t.app, "/sell/pay", &cookie, "method=cash").await;
    let sale = get(&t.app, "/sales/T1-000001", &cookie).await;
    assert!(sale.body.contains("Manager PIN"));

    let wrong =
        post(&t.app, "/sales/T1-000001/refund", &cookie, "qty_CAPPUCCINO=1&manager=Alex&manager_pin=9999").await;
    let page = follow(&t.app, &wrong, &cookie).await;
    assert!(page.body.contains("wrong PIN for Alex"), "{}", page.body);
    let cashier =
        post(&t.app, "/sales/T1-000001/refund", &cookie, "qty_CAPPUCCINO=1&manager=Sam&manager_pin=1111").await;
    assert!(follow(&t.app, &cashier, &cookie).await.body.contains("is not a manager"));
    let missing = post(&t.app, "/sales/T1-000001/void", &cookie, "manager=Alex&manager_pin=").await;
    assert!(follow(&t.app, &missing, &cookie).await.body.contains("PIN is missing"));
    {
        let store = t.state.store.lock().unwrap();
        let (id, _) = store.sale_by_receipt("T1-000001").unwrap();
        assert!(store.refunded_qty(id).unwrap().is_empty(), "nothing refunded without approval");
    }
    let ok =
        post(&t.app, "/sales/T1-000001/refund", &cookie, "qty_CAPPUCCINO=1&manager=Alex&manager_pin=1234&reason=cold")
            .await;
    let page = follow(&t.app, &ok, &cookie).await;
    assert!(page.body.contains("refunded EUR 3.50"), "{}", page.body);
    let store = t.state.store.lock().unwrap();
    let (id, _) = store.sale_by_receipt("T1-000001").unwrap();
    assert_eq!(store.refunded_qty(id).unwrap().get("CAPPUCCINO"), Some(&1));
}

#[tokio::test]
async fn large_discounts_and_price_overrides_need_a_managers_pin() {
    let t = till();
    let cookie = sign_in(&t.app, "Sam", "1111").await;
    post(&t.app, "/sell/add", &cookie, "sku=MUG").await;
    post(&t.app, "/sell/cart", &cookie, "discount=50&customer=").await;
    let checkout = get(&t.app, "/sell/checkout", &cookie).await;
    assert!(checkout.body.contains("Manager approval"));
    let r = post(&t.app, "/sell/pay", &cookie, "method=cash").await;
    assert_eq!(r.location(), "/sell/checkout");
    assert!(follow(&t.app, &r, &cookie).await.body.contains("manager is missing"));
    let r = post(&t.app, "/sell/pay", &cookie, "method=cash&manager=Alex&manager_pin=1234").await;
    assert_eq!(r.location(), "/receipt/T1-000001");
    // A price override is audited with the approving manager.
    post(&t.app, "/sell/add", &cookie, "sku=MUG").await;
    post(&t.app, "/sell/line", &cookie, "sku=MUG&op=adjust&discount=&price=10.00").await;
    let r = post(&t.app, "/sell/pay", &cookie, "method=cash&manager=Alex&manager_pin=1234").await;
    assert_eq!(r.location(), "/receipt/T1-000002");
    let store = t.state.store.lock().unwrap();
    let (_, sale) = store.sale_by_receipt("T1-000002").unwrap();
    assert_eq!(sale["total_minor"], 1000);
    let audit = store.ledger_rows(tillsync_core::schema::tables::AUDIT).unwrap();
    assert!(audit.iter().any(
        |r| r.data["action"] == "price_override" && r.data["staff_id"] == json!(store.find_staff("Alex").unwrap())
    ));
}

#[tokio::test]
async fn security_headers_on_every_ui_response() {
    let t = till();
    for path in ["/signin", "/assets/ui.css", "/assets/htmx-2.0.11.min.js", "/sell"] {
        let r = get(&t.app, path, "").await;
        let h = |k: &str| r.headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        assert!(h("content-security-policy").contains("default-src 'self'"), "{path}");
        assert_eq!(h("x-frame-options"), "DENY", "{path}");
        assert_eq!(h("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(h("referrer-policy"), "no-referrer", "{path}");
    }
}

#[tokio::test]
async fn cross_site_posts_and_large_bodies_are_refused() {
    let t = till();
    let req = Request::post("/signin")
        .header(header::HOST, HOST)
        .header(header::ORIGIN, "http://evil.example")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("staff=Alex&pin=1234"))
        .unwrap();
    let r = send(&t.app, req).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.headers.get(header::SET_COOKIE).is_none());
    // The same origin (and no Origin at all, as curl sends) is accepted.
    assert_eq!(post(&t.app, "/signin", "", "staff=Alex&pin=1234").await.status, StatusCode::SEE_OTHER);
    let big = format!("staff=Alex&pin={}", "1".repeat(tillsync_ui::FORM_BODY_LEN_MAX + 1));
    assert_eq!(post(&t.app, "/signin", "", &big).await.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn the_indicator_stream_sends_rendered_html() {
    use futures_util::StreamExt;
    let t = till();
    let req = Request::get("/ui/status/stream").header(header::HOST, HOST).body(Body::empty()).unwrap();
    let resp = t.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.headers().get(header::CONTENT_TYPE).unwrap(), "text/event-stream");
    let mut body = resp.into_body().into_data_stream();
    let first = tokio::time::timeout(std::time::Duration::from_secs(5), body.next()).await.unwrap().unwrap().unwrap();
    let text = String::from_utf8_lossy(&first);
    assert!(text.contains("event: summary") && text.contains("Offline"), "{text}");
}

#[test]
fn the_indicator_word_for_each_state() {
    let status = |state: &str, pending: i64| {
        json!({"state": state, "pending_total": pending, "hub_url": "https://hub.example", "mode": "hub",
               "network": {"type": "ethernet", "metered": false, "hub": "reachable"}, "progress": null})
    };
    assert_eq!(sync_state(&status("synced", 0)).word(), "Synced");
    assert_eq!(sync_state(&status("syncing", 2)).word(), "Syncing");
    let mut s = status("syncing", 2);
    s["progress"] = json!({"done": 1, "total": 2});
    assert_eq!(sync_state(&s), SyncState::Syncing(Some((1, 2))));
    assert_eq!(sync_state(&status("pending", 3)).word(), "3 pending");
    assert_eq!(sync_state(&status("offline", 0)).word(), "Offline");
    assert_eq!(sync_state(&status("offline", 1)).word(), "1 pending");
    assert_eq!(sync_state(&status("error", 1)).word(), "Error");
    let mut unreachable = status("error", 1);
    unreachable["network"]["reachable"] = json!(false);
    assert_eq!(sync_state(&unreachable).word(), "1 pending");
    assert_eq!(sync_state(&status("revoked", 0)).word(), "Revoked");
}

#[tokio::test]
async fn wrong_pins_in_a_row_pause_sign_in() {
    let t = till();
    for _ in 0..tillsync_ui::SIGNIN_FAILURES_MAX {
        assert_eq!(post(&t.app, "/signin", "", "staff=Alex&pin=0000").await.status, StatusCode::UNAUTHORIZED);
    }
    let r = post(&t.app, "/signin", "", "staff=Alex&pin=1234").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.body.contains("too many wrong PINs"));
}

#[tokio::test]
async fn a_server_error_page_shows_no_internal_detail() {
    let t = till();
    let cookie = sign_in(&t.app, "Alex", "1234").await;
    // The till's database loses a table under the UI.
    t.state.store.lock().unwrap().connection().execute_batch("DROP TABLE ledger").unwrap();
    let r = get(&t.app, "/stock", &cookie).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.body);
    // The page's own message (the header's sync indicator is the staff's
    // diagnostic view of the sync and shows its last failure as it is).
    let main = r.body.split("<main").nth(1).unwrap_or_default();
    assert!(main.contains("internal error"), "{}", r.body);
    let lower = main.to_lowercase();
    for bad in ["no such table", "sqlite", "ledger", "/tmp/"] {
        assert!(!lower.contains(bad), "the error page shows {bad:?}: {}", r.body);
    }
}
