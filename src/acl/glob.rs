//! Glob matching exactly as Redis 7.0's `stringmatchlen` (`util.c`).
//!
//! ACL key and channel patterns are matched with this function, so any difference from Redis
//! would let a request through that Redis would refuse (or the other way round). The port keeps
//! Redis's quirks on purpose:
//!
//! * bytes past the end of the pattern read as NUL (Redis patterns are NUL-terminated `sds`),
//!   which decides the unterminated `[` cases (`"[a"` matches `"a"`, `"[^"` matches any byte);
//! * range bounds in `[a-z]` compare as C `char`, i.e. *signed* bytes on the platforms Redis
//!   ships on, and are swapped when reversed (`[z-a]`);
//! * `\` inside a class compares case-sensitively even in `nocase` mode;
//! * a pattern never matches the empty string (`"*"` does not match `""`), because the main
//!   loop only runs while both pattern and string are non-empty;
//! * the 7.0.15 `skipLongerMatches` cut-off: once the text after a `*` failed to match at every
//!   later position, no earlier `*` is retried.
//!
//! * the CVE-2024-31228 guard the shipped 7.0.15 builds carry (Debian `7.0.15-1~deb12u2`
//!   and later, the oracle this crate is tested against): an invocation nested more than
//!   [`MAX_NESTING`] stars deep reports "no match", so a pattern needing more than 1000
//!   non-trailing `*` never matches.
//!
//! Redis recurses once per `*`; because of the cut-off only the innermost `*` ever resumes
//! its loop, so this port keeps a single "current star" and runs iteratively (no recursion, no
//! stack growth on hostile patterns) with identical results.

/// `stringmatchlen_impl`'s `nesting > 1000` guard.
pub const MAX_NESTING: usize = 1000;

/// Outcome of running the non-recursive part of `stringmatchlen_impl` from one position.
enum Step {
    /// The current invocation returned this value.
    Done(bool),
    /// A `*` (the last of a run of stars) at this pattern index was reached with the string
    /// at this index; Redis would now loop trying the rest of the pattern at each position.
    Star(usize, usize),
}

/// Redis's `stringmatchlen(pattern, string, nocase)`: does `string` match the glob `pattern`?
///
/// ACL patterns are mostly `prefix:*` or literal names, and a user's list is tried in order
/// until one matches, so most tries fail on the first byte. Those shapes are decided here by
/// comparing the pattern's literal head (the bytes before any of `* ? [ \`) with the string:
/// Redis's loop fails at the first differing literal byte too, and a literal head followed only
/// by stars matches every string that starts with it (`stringmatchlen` returns 1 at a last `*`,
/// and skips trailing stars once the string is used up). Everything else runs Redis's
/// algorithm. Measured: 20 non-matching `app<N>:*` patterns before `key:*` cost ~200 ns per key
/// through the general loop (`benches/acl.rs`).
pub fn stringmatch(pattern: &[u8], string: &[u8], nocase: bool) -> bool {
    if !nocase {
        let mut i = 0;
        while let Some(&c) = pattern.get(i) {
            if matches!(c, b'*' | b'?' | b'[' | b'\\') {
                break;
            }
            if string.get(i) != Some(&c) {
                return false;
            }
            i += 1;
        }
        if i > 0 {
            let rest = pattern.get(i..).unwrap_or(&[]);
            if rest.is_empty() {
                return string.len() == i;
            }
            if rest.iter().all(|&c| c == b'*') {
                return true;
            }
        }
    }
    stringmatch_general(pattern, string, nocase)
}

/// Redis's algorithm for any pattern (see the module docs).
pub fn stringmatch_general(pattern: &[u8], string: &[u8], nocase: bool) -> bool {
    let (mut pi, mut si) = (0usize, 0usize);
    // The innermost pending `*` loop: (index of the star, string index last tried).
    let mut star: Option<(usize, usize)> = None;
    // Recursion depth Redis would be at for the invocation now running.
    let mut nesting = 0usize;
    loop {
        match step(pattern, string, pi, si, nocase) {
            Step::Done(true) => return true,
            Step::Done(false) => match star {
                None => return false,
                Some((ps, tried)) => {
                    let next = tried + 1;
                    if next >= string.len() {
                        // The star loop ran out of string: Redis sets skipLongerMatches and
                        // every enclosing star returns "no match" at once.
                        return false;
                    }
                    star = Some((ps, next));
                    pi = ps + 1;
                    si = next;
                }
            },
            Step::Star(ps, s) => {
                nesting += 1;
                if nesting > MAX_NESTING {
                    // Every try of this star returns 0 without setting skipLongerMatches,
                    // then the loop runs out of string: no match.
                    return false;
                }
                star = Some((ps, s));
                pi = ps + 1;
                si = s;
            }
        }
    }
}

/// Byte `i` of `p`, or NUL past its end (Redis reads the sds terminator there).
fn at(p: &[u8], i: usize) -> u8 {
    p.get(i).copied().unwrap_or(0)
}

/// C `tolower` in the "C" locale.
fn lower(c: u8) -> u8 {
    c.to_ascii_lowercase()
}

/// One invocation of `stringmatchlen_impl` up to (not into) its recursive `*` loop.
fn step(p: &[u8], s: &[u8], mut pi: usize, mut si: usize, nocase: bool) -> Step {
    let plen = p.len();
    let slen = s.len();
    while pi < plen && si < slen {
        let sc = at(s, si);
        match at(p, pi) {
            b'*' => {
                while pi < plen && at(p, pi + 1) == b'*' {
                    pi += 1;
                }
                if plen - pi == 1 {
                    return Step::Done(true);
                }
                return Step::Star(pi, si);
            }
            b'?' => si += 1,
            b'[' => {
                pi += 1;
                let not = at(p, pi) == b'^';
                if not {
                    pi += 1;
                }
                let mut matched = false;
                loop {
                    let left = plen.saturating_sub(pi);
                    let c = at(p, pi);
                    if c == b'\\' && left >= 2 {
                        pi += 1;
                        if at(p, pi) == sc {
                            matched = true;
                        }
                    } else if c == b']' && left > 0 {
                        break;
                    } else if left == 0 {
                        // Unterminated class: step back so the outer advance lands on the end.
                        pi -= 1;
                        break;
                    } else if left >= 3 && at(p, pi + 1) == b'-' {
                        // C `char` is signed: compare as i8.
                        let mut start = i32::from(c as i8);
                        let mut end = i32::from(at(p, pi + 2) as i8);
                        let mut ch = i32::from(sc as i8);
                        if start > end {
                            std::mem::swap(&mut start, &mut end);
                        }
                        if nocase {
                            start = c_tolower(start);
                            end = c_tolower(end);
                            ch = c_tolower(ch);
                        }
                        pi += 2;
                        if ch >= start && ch <= end {
                            matched = true;
                        }
                    } else if nocase {
                        if lower(c) == lower(sc) {
                            matched = true;
                        }
                    } else if c == sc {
                        matched = true;
                    }
                    pi += 1;
                }
                if not {
                    matched = !matched;
                }
                if !matched {
                    return Step::Done(false);
                }
                si += 1;
            }
            c => {
                let c = if c == b'\\' && plen - pi >= 2 {
                    pi += 1;
                    at(p, pi)
                } else {
                    c
                };
                let same = if nocase {
                    lower(c) == lower(sc)
                } else {
                    c == sc
                };
                if !same {
                    return Step::Done(false);
                }
                si += 1;
            }
        }
        pi += 1;
        if si == slen {
            while at(p, pi) == b'*' && pi < plen {
                pi += 1;
            }
            break;
        }
    }
    Step::Done(pi >= plen && si == slen)
}

/// glibc `tolower` on a (possibly negative) `char` value: only ASCII letters change.
fn c_tolower(c: i32) -> i32 {
    if (i32::from(b'A')..=i32::from(b'Z')).contains(&c) {
        c + 32
    } else {
        c
    }
}
