//! The session's phases without sockets: state driven by hand for dispatch, login, routing and
//! the reply path, and [`serve`] over an in-memory stream with tokio's paused clock for the
//! deadlines. (Everything with a real Redis is in `tests/`.)

use std::path::Path;

use super::*;

/// `default` needs a password; `app` may read and write `app:*` keys only.
const CONFIG: &str = r#"
listen:
  - address: "127.0.0.1:0"
    tls: off
upstream: { address: "127.0.0.1:1" }
users:
  - name: default
    rules: "on >secret ~* &* +@all"
  - name: app
    rules: "on >pw resetchannels -@all +@read +@write ~app:*"
  - name: rated
    rules: "on >pw ~* &* +@all"
    commands_per_second: 2
  - name: narrow
    rules: "on >pw ~app:* +@all"
"#;

fn shared() -> Arc<Shared> {
    let cfg = crate::config::from_text(CONFIG, Path::new("test.yaml")).expect("config is valid");
    Shared::offline(&cfg).expect("shared")
}

fn state() -> State {
    let addrs = Addrs {
        peer: SocketAddr::from(([127, 0, 0, 1], 40000)),
        local: None,
        node: None,
    };
    State::new(shared(), addrs, None)
}

fn cmd(args: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_command(&mut out, args.iter().map(|a| a.as_bytes()));
    out
}

/// Dispatches every request in `input` as the loop would on a connection of `conn`'s kind.
fn dispatch_all(st: &mut State, conn: ConnKind, input: &[u8]) -> Vec<Outcome> {
    let mut parser = RequestParser::new();
    let mut cin = BytesMut::from(input);
    let mut outcomes = Vec::new();
    while let Ok(Some(frame)) = parser.parse(&cin, &st.frame_limits()) {
        let len = frame.len();
        if let Frame::Command { .. } = frame {
            let req = parser.request(&cin, &frame);
            outcomes.push(st.dispatch(&req, cin.get(..len).unwrap_or(&[]), conn));
        }
        cin.advance(len);
    }
    outcomes
}

/// What the client has been sent so far (the slots in front released).
fn sent(st: &mut State) -> String {
    st.release_front();
    String::from_utf8_lossy(&st.out.cout.split()).into_owned()
}

fn log_in(st: &mut State, user: &str, password: &str) {
    dispatch_all(st, ConnKind::None, &cmd(&["AUTH", user, password]));
    assert_eq!(sent(st), "+OK\r\n");
}

#[test]
fn before_login_nothing_reaches_redis_and_commands_get_noauth() {
    let mut st = state();
    assert!(st.login.is_none());
    let outcomes = dispatch_all(&mut st, ConnKind::Shared, &cmd(&["GET", "k"]));
    assert_eq!(outcomes, [Outcome::Done]);
    assert!(sent(&mut st).starts_with("-NOAUTH"));
    assert!(st.out.uout.is_empty());
}

#[test]
fn a_wrong_password_is_refused_and_a_right_one_yields_the_login_proof() {
    let mut st = state();
    dispatch_all(&mut st, ConnKind::None, &cmd(&["AUTH", "app", "nope"]));
    assert!(sent(&mut st).starts_with("-WRONGPASS"));
    assert!(st.login.is_none());
    log_in(&mut st, "app", "pw");
    assert_eq!(
        st.login.as_ref().map(|l| l.user().name.as_str()),
        Some("app")
    );
    // RESET logs out (and `default` is not nopass, so back to no login at all).
    dispatch_all(&mut st, ConnKind::None, &cmd(&["RESET"]));
    assert_eq!(sent(&mut st), "+RESET\r\n");
    assert!(st.login.is_none());
}

#[test]
fn refusals_are_slotted_between_redis_replies_in_request_order() {
    let mut st = state();
    log_in(&mut st, "app", "pw");
    let mut input = cmd(&["GET", "app:1"]);
    input.extend(cmd(&["GET", "other"]));
    input.extend(cmd(&["SET", "app:2", "v"]));
    let outcomes = dispatch_all(&mut st, ConnKind::Shared, &input);
    assert_eq!(outcomes, [Outcome::Done; 3]);
    // Only the two allowed requests went out, on the shared connection.
    assert_eq!(st.out.shared_unsent, 2);
    assert_eq!(
        st.out.uout.as_ref(),
        [cmd(&["GET", "app:1"]), cmd(&["SET", "app:2", "v"])].concat()
    );
    assert_eq!(sent(&mut st), "", "nothing before Redis's first reply");
    let mut scanner = ReplyScanner::new();
    let mut uin = BytesMut::from(&b"$1\r\na\r\n+OK\r\n"[..]);
    st.take_replies(&mut scanner, &mut uin).expect("replies");
    let out = sent(&mut st);
    let (first, rest) = out.split_at(7);
    assert_eq!(first, "$1\r\na\r\n");
    assert!(rest.starts_with("-NOPERM"), "{rest}");
    assert!(rest.ends_with("+OK\r\n"), "{rest}");
}

#[test]
fn a_command_that_keeps_connection_state_asks_for_the_clients_own_connection() {
    let mut st = state();
    log_in(&mut st, "default", "secret");
    // (SELECT too, while redward does not know how many databases Redis has.)
    for state_command in [
        &["MULTI"][..],
        &["SELECT", "1"],
        &["CLIENT", "TRACKING", "ON"],
    ] {
        let outcomes = dispatch_all(&mut st, ConnKind::Shared, &cmd(state_command));
        assert_eq!(outcomes, [Outcome::NeedUpstream], "{state_command:?}");
        assert!(st.out.uout.is_empty(), "nothing sent before the move");
        st.flow.admitted = None;
    }
    let outcomes = dispatch_all(&mut st, ConnKind::Shared, &cmd(&["GET", "k"]));
    assert_eq!(outcomes, [Outcome::Done]);
    assert_eq!(st.out.shared_unsent, 1);
}

#[test]
fn name_database_and_protocol_live_in_redward_for_a_client_on_shared_connections() {
    let mut st = state();
    st.shared
        .databases
        .store(16, std::sync::atomic::Ordering::Relaxed);
    log_in(&mut st, "default", "secret");
    let script = [
        cmd(&["CLIENT", "SETNAME", "worker"]),
        cmd(&["CLIENT", "GETNAME"]),
        cmd(&["CLIENT", "SETNAME", "two words"]),
    ]
    .concat();
    let outcomes = dispatch_all(&mut st, ConnKind::Shared, &script);
    assert_eq!(outcomes, [Outcome::Done; 3]);
    assert_eq!(
        sent(&mut st),
        "+OK\r\n$6\r\nworker\r\n-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
    );
    assert!(st.out.uout.is_empty(), "nothing reached Redis");
    // SELECT and HELLO 3 move to shared connections set up that way, not to an own one.
    let outcomes = dispatch_all(&mut st, ConnKind::Shared, &cmd(&["SELECT", "3"]));
    assert_eq!(
        outcomes,
        [Outcome::Reattach(Setup {
            resp3: false,
            db: 3,
            user: None
        })]
    );
    let outcomes = dispatch_all(&mut st, ConnKind::Shared, &cmd(&["SELECT", "16"]));
    assert_eq!(outcomes, [Outcome::Done]);
    assert_eq!(sent(&mut st), "-ERR DB index is out of range\r\n");
    st.flow.admitted = None;
    let outcomes = dispatch_all(&mut st, ConnKind::Shared, &cmd(&["HELLO", "3"]));
    assert_eq!(
        outcomes,
        [Outcome::Reattach(Setup {
            resp3: true,
            db: 0,
            user: None
        })]
    );
}

#[test]
fn a_reply_hook_sees_a_reply_whole_however_it_arrives_and_others_stream_through() {
    #[derive(Debug)]
    struct Upper;
    impl Rewrite for Upper {
        fn rewrite(&self, reply: &[u8], _info: &FrameInfo, out: &mut BytesMut) {
            out.extend_from_slice(&reply.to_ascii_uppercase());
        }
    }
    let mut st = state();
    log_in(&mut st, "default", "secret");
    let now = st.now();
    for rewrite in [None, Some(Arc::new(Upper) as Arc<dyn Rewrite>), None] {
        st.slots.push(Slot::Upstream {
            expect: Expect::Replies(1),
            forward: true,
            sent: now,
            hook: Hook::None,
            rewrite,
        });
    }
    let replies = b"$5\r\nfirst\r\n$6\r\nsecond\r\n$5\r\nthird\r\n";
    let mut scanner = ReplyScanner::new();
    let mut out = String::new();
    // One byte at a time: the hooked reply is held across reads, the others stream.
    let mut uin = BytesMut::new();
    for byte in replies {
        uin.extend_from_slice(&[*byte]);
        st.take_replies(&mut scanner, &mut uin).expect("replies");
        out.push_str(&sent(&mut st));
    }
    assert_eq!(out, "$5\r\nfirst\r\n$6\r\nSECOND\r\n$5\r\nthird\r\n");
    assert!(st.slots.is_empty());
}

/// `serve` on one end of an in-memory stream; the test holds the other end.
fn spawn_session(
    stop: &CancellationToken,
) -> (
    tokio::task::JoinHandle<Result<(), SessionError>>,
    tokio::io::DuplexStream,
) {
    let (client, peer) = tokio::io::duplex(4096);
    let addr = Addrs {
        peer: SocketAddr::from(([127, 0, 0, 1], 40001)),
        local: None,
        node: None,
    };
    let session = tokio::spawn(serve(client, addr, shared(), stop.clone(), None));
    (session, peer)
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_logs_in_is_closed_at_the_login_deadline() {
    let (session, mut peer) = spawn_session(&CancellationToken::new());
    // A request before login is answered (NOAUTH) without any upstream.
    tokio::io::AsyncWriteExt::write_all(&mut peer, &cmd(&["GET", "k"]))
        .await
        .expect("write");
    let mut buf = [0u8; 64];
    let n = tokio::io::AsyncReadExt::read(&mut peer, &mut buf)
        .await
        .expect("read");
    assert!(buf.get(..n).is_some_and(|b| b.starts_with(b"-NOAUTH")));
    // The paused clock jumps to the deadline once everything waits.
    let result = session.await.expect("session task");
    assert!(
        matches!(result, Err(SessionError::AuthTimeout)),
        "{result:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_an_idle_logged_in_session_cleanly() {
    let stop = CancellationToken::new();
    let (session, mut peer) = spawn_session(&stop);
    tokio::io::AsyncWriteExt::write_all(&mut peer, &cmd(&["AUTH", "secret"]))
        .await
        .expect("write");
    let mut buf = [0u8; 16];
    let n = tokio::io::AsyncReadExt::read(&mut peer, &mut buf)
        .await
        .expect("read");
    assert_eq!(buf.get(..n), Some(&b"+OK\r\n"[..]));
    stop.cancel();
    let result = session.await.expect("session task");
    assert!(result.is_ok(), "{result:?}");
}

#[test]
fn a_request_that_waits_is_admitted_once_and_its_verdict_is_its_own() {
    // The command rate is charged once per request, not once per dispatch: MULTI asks for a
    // connection of its own, comes back, and costs one token of the two.
    let mut st = state();
    log_in(&mut st, "rated", "pw");
    let multi = cmd(&["MULTI"]);
    assert_eq!(
        dispatch_all(&mut st, ConnKind::Shared, &multi),
        [Outcome::NeedUpstream]
    );
    assert_eq!(
        dispatch_all(&mut st, ConnKind::Dedicated, &multi),
        [Outcome::Done]
    );
    assert_eq!(
        dispatch_all(&mut st, ConnKind::Dedicated, &cmd(&["GET", "k"])),
        [Outcome::Done]
    );
    assert_eq!(st.counts.refused, 0, "two requests, two tokens");
    dispatch_all(&mut st, ConnKind::Dedicated, &cmd(&["GET", "k"]));
    assert_eq!(st.counts.refused, 1, "the third is over the rate");

    // A verdict never carries over to another request: after a request waited, a different
    // one is admitted afresh (here refused by the user's key patterns).
    let mut st = state();
    log_in(&mut st, "narrow", "pw");
    assert_eq!(
        dispatch_all(&mut st, ConnKind::Shared, &cmd(&["MULTI"])),
        [Outcome::NeedUpstream]
    );
    assert!(st.flow.admitted.is_some());
    let outcomes = dispatch_all(&mut st, ConnKind::Dedicated, &cmd(&["GET", "secret"]));
    assert_eq!(outcomes, [Outcome::Done]);
    assert!(st.flow.admitted.is_none());
    assert!(
        sent(&mut st).starts_with("-NOPERM"),
        "admitted afresh and refused"
    );
}
