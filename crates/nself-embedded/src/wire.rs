//! Just enough of the PostgreSQL wire protocol for the facade's own use: building a simple
//! query, splitting backend output into messages and reading text rows and errors. The bridge
//! owns the real protocol handling; this module never sees a client's bytes.

/// A `Query` message for `sql`.
pub(crate) fn query(sql: &str) -> Vec<u8> {
    let mut res = Vec::with_capacity(sql.len() + 6);
    res.push(b'Q');
    res.extend_from_slice(&(sql.len() as u32 + 5).to_be_bytes());
    res.extend_from_slice(sql.as_bytes());
    res.push(0);
    res
}

/// A `StartupMessage` (protocol 3.0) with the given parameters.
pub(crate) fn startup(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for (name, value) in params {
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut res = (body.len() as u32 + 4).to_be_bytes().to_vec();
    res.extend_from_slice(&body);
    res
}

/// Splits complete backend messages into `(tag, body)`; `None` when the bytes end inside a
/// message (the caller reads more).
pub(crate) fn messages(mut bytes: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut res = Vec::new();
    while !bytes.is_empty() {
        let len = message_len(bytes)?;
        res.push((bytes[0], &bytes[5..len]));
        bytes = &bytes[len..];
    }
    Some(res)
}

/// The whole length (tag included) of the message at the start of `bytes`, if it is complete.
pub(crate) fn message_len(bytes: &[u8]) -> Option<usize> {
    let header: [u8; 4] = bytes.get(1..5)?.try_into().ok()?;
    let len = u32::from_be_bytes(header) as usize;
    (len >= 4 && bytes.len() > len).then_some(len + 1)
}

/// The text values of a `DataRow` body; `None` for SQL NULL. `None` overall when malformed.
pub(crate) fn data_row(body: &[u8]) -> Option<Vec<Option<String>>> {
    let n = u16::from_be_bytes(body.get(..2)?.try_into().ok()?) as usize;
    let mut at = 2;
    let mut res = Vec::with_capacity(n);
    for _ in 0..n {
        let len = i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        if len < 0 {
            res.push(None);
            continue;
        }
        let value = body.get(at..at + len as usize)?;
        at += len as usize;
        res.push(Some(String::from_utf8_lossy(value).into_owned()));
    }
    Some(res)
}

/// The SQLSTATE and message of an `ErrorResponse` body.
pub(crate) fn error_fields(body: &[u8]) -> (String, String) {
    let mut code = String::new();
    let mut message = String::new();
    for field in body.split(|&b| b == 0).filter(|f| !f.is_empty()) {
        let text = String::from_utf8_lossy(&field[1..]).into_owned();
        match field[0] {
            b'C' => code = text,
            b'M' => message = text,
            _ => {}
        }
    }
    (code, message)
}

#[cfg(test)]
mod tests;
