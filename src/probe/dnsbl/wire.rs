//! DNS messages on the wire: one question out, the answer read back. Pure.

use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

/// The two record types a DNSBL is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryType {
    /// The listing codes.
    A,
    /// The reason of a listing.
    Txt,
    /// The name of an address (reverse DNS, [`crate::probe::reverse_dns`]).
    Ptr,
    /// The IPv6 addresses of a name (forward confirmation of a PTR name).
    Aaaa,
}

impl QueryType {
    fn record_type(self) -> RecordType {
        match self {
            QueryType::A => RecordType::A,
            QueryType::Txt => RecordType::TXT,
            QueryType::Ptr => RecordType::PTR,
            QueryType::Aaaa => RecordType::AAAA,
        }
    }
}

/// The response code of a reply, reduced to what the probe tells apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rcode {
    NoError,
    NxDomain,
    ServFail,
    Refused,
    Other(String),
}

/// What a reply to our question says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub rcode: Rcode,
    /// A records of the answer section.
    pub addresses: Vec<Ipv4Addr>,
    /// TXT records of the answer section, each record's strings joined.
    pub texts: Vec<String>,
    /// PTR records of the answer section (names with their final dot).
    pub names: Vec<String>,
    /// AAAA records of the answer section.
    pub addresses6: Vec<Ipv6Addr>,
    pub truncated: bool,
}

/// A datagram read from the resolver's socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    Reply(Reply),
    /// A reply to another question (an old attempt, or a forged packet): ignore it.
    NotOurs,
}

/// Why a query could not be written or a datagram could not be read. The
/// DNS library's own words are kept as text so the error stays comparable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("`{name}` is not a DNS name: {reason}")]
    NotDnsName { name: String, reason: String },
    #[error("cannot encode the query: {reason}")]
    Encode { reason: String },
    #[error("not a DNS message ({length} bytes): {reason}")]
    NotDnsMessage { length: usize, reason: String },
}

fn dns_name(name: &str) -> Result<Name, WireError> {
    Name::from_ascii(name).map_err(|e| WireError::NotDnsName {
        name: name.to_string(),
        reason: e.to_string(),
    })
}

/// A recursive query for `name` (fully qualified, with the trailing dot).
pub fn encode_query(id: u16, name: &str, qtype: QueryType) -> Result<Vec<u8>, WireError> {
    let name = dns_name(name)?;
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(name, qtype.record_type()));
    message.to_vec().map_err(|e| WireError::Encode {
        reason: e.to_string(),
    })
}

/// Reads a datagram. A reply counts only if its id is one we sent and it
/// answers our exact question; anything else is [`Decoded::NotOurs`].
pub fn decode_reply(
    bytes: &[u8],
    ids: &[u16],
    name: &str,
    qtype: QueryType,
) -> Result<Decoded, WireError> {
    let message = Message::from_vec(bytes).map_err(|e| WireError::NotDnsMessage {
        length: bytes.len(),
        reason: e.to_string(),
    })?;
    let meta = &message.metadata;
    if !ids.contains(&meta.id) || meta.message_type != MessageType::Response {
        return Ok(Decoded::NotOurs);
    }
    let expected = dns_name(name)?;
    let answers_our_question = match message.queries.as_slice() {
        [query] => query.name() == &expected && query.query_type() == qtype.record_type(),
        // Some servers drop the question from error replies; the id and the
        // connected socket still tie it to us.
        [] => meta.response_code != ResponseCode::NoError,
        _ => false,
    };
    if !answers_our_question {
        return Ok(Decoded::NotOurs);
    }
    let rcode = match meta.response_code {
        ResponseCode::NoError => Rcode::NoError,
        ResponseCode::NXDomain => Rcode::NxDomain,
        ResponseCode::ServFail => Rcode::ServFail,
        ResponseCode::Refused => Rcode::Refused,
        other => Rcode::Other(format!("{other:?}")),
    };
    let mut addresses = Vec::new();
    let mut texts = Vec::new();
    let mut names = Vec::new();
    let mut addresses6 = Vec::new();
    for record in &message.answers {
        match &record.data {
            RData::A(a) if qtype == QueryType::A => addresses.push(a.0),
            RData::TXT(txt) if qtype == QueryType::Txt => {
                let text: String = txt
                    .txt_data
                    .iter()
                    .map(|part| String::from_utf8_lossy(part))
                    .collect();
                texts.push(text);
            }
            RData::PTR(ptr) if qtype == QueryType::Ptr => names.push(ptr.0.to_ascii()),
            RData::AAAA(aaaa) if qtype == QueryType::Aaaa => addresses6.push(aaaa.0),
            _ => {}
        }
    }
    Ok(Decoded::Reply(Reply {
        rcode,
        addresses,
        texts,
        names,
        addresses6,
        truncated: meta.truncation,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, TXT};
    use hickory_proto::rr::Record;

    const NAME: &str = "2.0.0.127.zen.test.";

    fn reply_to(query: &[u8], rcode: ResponseCode, answers: Vec<RData>) -> Vec<u8> {
        let request = Message::from_vec(query).unwrap();
        let mut reply = Message::response(request.metadata.id, OpCode::Query);
        reply.metadata.response_code = rcode;
        reply.add_queries(request.queries.clone());
        let name = request.queries[0].name().clone();
        for data in answers {
            reply.add_answer(Record::from_rdata(name.clone(), 60, data));
        }
        reply.to_vec().unwrap()
    }

    #[test]
    fn a_reply_round_trips() {
        let query = encode_query(7, NAME, QueryType::A).unwrap();
        let bytes = reply_to(
            &query,
            ResponseCode::NoError,
            vec![
                RData::A(A::new(127, 0, 0, 2)),
                RData::A(A::new(127, 0, 0, 4)),
            ],
        );
        let Decoded::Reply(reply) = decode_reply(&bytes, &[7], NAME, QueryType::A).unwrap() else {
            panic!()
        };
        assert_eq!(reply.rcode, Rcode::NoError);
        assert_eq!(
            reply.addresses,
            vec![Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 4)]
        );
    }

    #[test]
    fn txt_strings_of_one_record_are_joined() {
        let query = encode_query(9, NAME, QueryType::Txt).unwrap();
        let bytes = reply_to(
            &query,
            ResponseCode::NoError,
            vec![RData::TXT(TXT::new(vec![
                "Listed in ".into(),
                "SBL".into(),
            ]))],
        );
        let Decoded::Reply(reply) = decode_reply(&bytes, &[9], NAME, QueryType::Txt).unwrap()
        else {
            panic!()
        };
        assert_eq!(reply.texts, vec!["Listed in SBL".to_string()]);
    }

    #[test]
    fn replies_to_other_ids_or_questions_are_not_ours() {
        let query = encode_query(7, NAME, QueryType::A).unwrap();
        let bytes = reply_to(&query, ResponseCode::NXDomain, vec![]);
        assert_eq!(
            decode_reply(&bytes, &[8], NAME, QueryType::A).unwrap(),
            Decoded::NotOurs
        );
        assert_eq!(
            decode_reply(&bytes, &[7], "3.0.0.127.zen.test.", QueryType::A).unwrap(),
            Decoded::NotOurs
        );
        assert_eq!(
            decode_reply(&bytes, &[7], NAME, QueryType::Txt).unwrap(),
            Decoded::NotOurs
        );
        // Our own query echoed back is not a reply.
        assert_eq!(
            decode_reply(&query, &[7], NAME, QueryType::A).unwrap(),
            Decoded::NotOurs
        );
    }

    #[test]
    fn error_rcodes_are_told_apart() {
        let query = encode_query(1, NAME, QueryType::A).unwrap();
        for (code, want) in [
            (ResponseCode::NXDomain, Rcode::NxDomain),
            (ResponseCode::ServFail, Rcode::ServFail),
            (ResponseCode::Refused, Rcode::Refused),
        ] {
            let bytes = reply_to(&query, code, vec![]);
            let Decoded::Reply(reply) = decode_reply(&bytes, &[1], NAME, QueryType::A).unwrap()
            else {
                panic!()
            };
            assert_eq!(reply.rcode, want);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&b""[..], b"\x00\x01", &[0xff; 40]] {
            assert!(decode_reply(bytes, &[1], NAME, QueryType::A).is_err());
        }
    }
}
