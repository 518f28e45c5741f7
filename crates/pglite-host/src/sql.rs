//! The host's own SQL on an instance it manages (setting up databases and roles, the session
//! baseline): simple-protocol queries built and answers read with `postgres-protocol`, the
//! workspace's wire codec. Never used for clients' traffic.

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::{backend, frontend};

use crate::Error;
use crate::instance::{ExecError, Instance};

/// What a simple query returned: its rows, as text. (An error ends it as [`Error::Sql`].)
#[derive(Debug, Default)]
pub(crate) struct Reply {
    pub(crate) rows: Vec<Vec<Option<String>>>,
}

/// A simple-protocol `Query` message.
pub(crate) fn query_message(sql: &str) -> Vec<u8> {
    let mut buf = BytesMut::with_capacity(sql.len() + 6);
    // Only fails for text with a NUL in it, which the host never sends.
    frontend::query(sql, &mut buf).expect("host SQL holds no NUL");
    buf.to_vec()
}

/// Runs `sql` (statements the host wrote) and returns its rows; an `ErrorResponse` becomes
/// [`Error::Sql`].
pub(crate) fn run(instance: &mut Instance, sql: &str) -> Result<Reply, Error> {
    let reply = instance.exec(&query_message(sql), crate::Interrupt::default()).map_err(|err| match err {
        ExecError::Refused(err) | ExecError::Dead(err) => err,
    })?;
    parse(&reply, sql)
}

/// The SQLSTATE of the first error in `reply`, if it has one.
pub(crate) fn first_error_code(reply: &[u8]) -> Option<String> {
    match parse(reply, "") {
        Err(Error::Sql { code, .. }) => Some(code),
        _ => None,
    }
}

fn parse(reply: &[u8], sql: &str) -> Result<Reply, Error> {
    let malformed = |reason: String| Error::Sql { sql: sql.to_owned(), code: "08P01".to_owned(), message: reason };
    let mut buf = BytesMut::from(reply);
    let mut res = Reply::default();
    while let Some(message) = backend::Message::parse(&mut buf).map_err(|err| malformed(err.to_string()))? {
        match message {
            backend::Message::DataRow(row) => {
                let bytes = row.buffer();
                let mut values = Vec::new();
                let mut ranges = row.ranges();
                while let Some(range) = ranges.next().map_err(|err| malformed(err.to_string()))? {
                    values.push(range.map(|range| String::from_utf8_lossy(&bytes[range]).into_owned()));
                }
                res.rows.push(values);
            }
            backend::Message::ErrorResponse(body) => {
                let (mut code, mut message) = (String::new(), String::new());
                let mut fields = body.fields();
                while let Some(field) = fields.next().map_err(|err| malformed(err.to_string()))? {
                    match field.type_() {
                        b'C' => code = String::from_utf8_lossy(field.value_bytes()).into_owned(),
                        b'M' => message = String::from_utf8_lossy(field.value_bytes()).into_owned(),
                        _ => {}
                    }
                }
                return Err(Error::Sql { sql: sql.to_owned(), code, message });
            }
            _ => {}
        }
    }
    if !buf.is_empty() {
        return Err(malformed("reply ends inside a message".to_owned()));
    }
    Ok(res)
}

/// `name` as a quoted SQL identifier.
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `value` as an SQL string literal (`standard_conforming_strings` is on in every session
/// the host runs SQL in).
pub(crate) fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}
