use super::*;

fn parse_all(input: &[u8], limits: Limits) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
    let mut p = RequestParser::new();
    let mut buf = input.to_vec();
    let mut out = Vec::new();
    while let Some(frame) = p.parse(&buf, &limits)? {
        if let Frame::Command { .. } = frame {
            out.push(p.request(&buf, &frame).args().map(<[u8]>::to_vec).collect());
        }
        buf.drain(..frame.len());
    }
    Ok(out)
}

fn args(v: &[&str]) -> Vec<Vec<u8>> {
    v.iter().map(|s| s.as_bytes().to_vec()).collect()
}

#[test]
fn multibulk_requests_are_framed_whole_and_in_pieces() {
    let input = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n";
    let want = vec![args(&["GET", "k"]), args(&["SET", "k", ""])];
    assert_eq!(parse_all(input, Limits::default()).unwrap(), want);
    // Byte by byte: the parser resumes where it stopped.
    let mut p = RequestParser::new();
    let mut buf = Vec::new();
    let mut got = Vec::new();
    for &b in input.iter() {
        buf.push(b);
        while let Some(frame) = p.parse(&buf, &Limits::default()).unwrap() {
            got.push(
                p.request(&buf, &frame)
                    .args()
                    .map(<[u8]>::to_vec)
                    .collect::<Vec<_>>(),
            );
            buf.drain(..frame.len());
        }
    }
    assert_eq!(got, want);
}

#[test]
fn inline_requests_follow_sdssplitargs() {
    let got = parse_all(
        b"set k \"a\\x41\\n b\" 'it\\'s'\r\nPING\n  \r\n",
        Limits::default(),
    );
    assert_eq!(
        got.unwrap(),
        vec![args(&["set", "k", "aA\n b", "it's"]), args(&["PING"])]
    );
    assert_eq!(
        parse_all(b"get \"k\r\n", Limits::default()),
        Err(ProtocolError::UnbalancedQuotes)
    );
    assert_eq!(
        parse_all(b"get \"k\"x\r\n", Limits::default()),
        Err(ProtocolError::UnbalancedQuotes)
    );
}

#[test]
fn empty_multibulk_is_consumed_without_a_command() {
    assert_eq!(
        parse_all(b"*0\r\n*-1\r\n", Limits::default()).unwrap(),
        Vec::<Vec<Vec<u8>>>::new()
    );
}

#[test]
fn protocol_errors_match_redis() {
    let d = Limits::default();
    assert_eq!(
        parse_all(b"*x\r\n", d),
        Err(ProtocolError::InvalidMultibulkLength)
    );
    assert_eq!(
        parse_all(b"*01\r\n", d),
        Err(ProtocolError::InvalidMultibulkLength)
    );
    assert_eq!(
        parse_all(b"*2147483648\r\n", d),
        Err(ProtocolError::InvalidMultibulkLength)
    );
    assert_eq!(
        parse_all(b"*1\r\n:1\r\n", d),
        Err(ProtocolError::ExpectedDollar(b':'))
    );
    assert_eq!(
        parse_all(b"*1\r\n$-1\r\n", d),
        Err(ProtocolError::InvalidBulkLength)
    );
    assert_eq!(
        parse_all(b"*1\r\n$536870913\r\n", d),
        Err(ProtocolError::InvalidBulkLength)
    );
    let pre = Limits::new(super::DEFAULT_MAX_BULK_LEN, PROTO_INLINE_MAX_SIZE, false);
    assert_eq!(
        parse_all(b"*11\r\n", pre),
        Err(ProtocolError::UnauthenticatedMultibulkLength)
    );
    assert_eq!(
        parse_all(b"*1\r\n$16385\r\n", pre),
        Err(ProtocolError::UnauthenticatedBulkLength)
    );
    assert_eq!(
        parse_all(b"*1\r\n$536870913\r\n", pre),
        Err(ProtocolError::InvalidBulkLength)
    );
    let long = vec![b'a'; PROTO_INLINE_MAX_SIZE + 1];
    assert_eq!(parse_all(&long, d), Err(ProtocolError::TooBigInline));
    let mut star = b"*".to_vec();
    star.extend_from_slice(&long);
    assert_eq!(parse_all(&star, d), Err(ProtocolError::TooBigMbulkCount));
    assert_eq!(
        ProtocolError::ExpectedDollar(b'x').reply(),
        b"-ERR Protocol error: expected '$', got 'x'\r\n".to_vec()
    );
}

#[test]
fn redis_skips_the_two_bytes_after_a_bulk_unchecked() {
    assert_eq!(
        parse_all(b"*1\r\n$4\r\nPINGxx", Limits::default()).unwrap(),
        vec![args(&["PING"])]
    );
}

#[test]
fn string2ll_is_strict() {
    assert_eq!(string2ll(b"0"), Some(0));
    assert_eq!(string2ll(b"-5"), Some(-5));
    assert_eq!(string2ll(b"-0"), None);
    assert_eq!(string2ll(b"+5"), None);
    assert_eq!(string2ll(b"05"), None);
    assert_eq!(string2ll(b" 5"), None);
    assert_eq!(string2ll(b"9223372036854775807"), Some(i64::MAX));
    assert_eq!(string2ll(b"-9223372036854775808"), Some(i64::MIN));
    assert_eq!(string2ll(b"9223372036854775808"), None);
}
