//! A request's record while the request is in flight, and the one place the
//! record is finished.

use std::sync::Arc;

use super::Shared;
use crate::record::RequestRecord;

/// Small on purpose: futures and bodies that hold it are moved several times by
/// the layers around them, so the record itself lives in one box that goes, as
/// it is, all the way to the export queue.
#[derive(Debug)]
pub(crate) struct InFlight {
    pub(crate) shared: Arc<Shared>,
    pub(crate) record: Box<RequestRecord>,
}

/// The decimal text of every status code from 400 to 599, made at compile time,
/// so `error.type` costs no allocation on the request path.
static STATUS_TEXT: [[u8; 3]; 200] = {
    let mut table = [[0u8; 3]; 200];
    let mut i = 0;
    while i < 200 {
        let code = 400 + i;
        table[i] = [
            b'0' + (code / 100) as u8,
            b'0' + (code / 10 % 10) as u8,
            b'0' + (code % 10) as u8,
        ];
        i += 1;
    }
    table
};

/// The status code as text, for 4xx and 5xx codes.
pub(crate) fn status_text(status: u16) -> Option<&'static str> {
    let row = STATUS_TEXT.get(usize::from(status).checked_sub(400)?)?;
    std::str::from_utf8(row).ok()
}

/// `error.type` of a server response: the status code for 5xx, as the HTTP
/// semantic conventions ask (a 4xx is the client's error, not the server's).
pub(crate) fn status_error_type(status: u16) -> Option<&'static str> {
    if status >= 500 { status_text(status) } else { None }
}

impl InFlight {
    pub(crate) fn set_status(&mut self, status: u16) {
        self.record.status = Some(status);
        if self.record.error_type.is_none() {
            self.record.error_type = status_error_type(status);
        }
    }

    /// Ends an operator request, left out of spans, metrics and the access log.
    pub(crate) fn finish_excluded(self) {
        let InFlight { shared, record } = self;
        shared.recorder.finish_excluded(record);
    }

    /// Ends the request: the record goes to the sinks.
    pub(crate) fn finish(self) {
        let InFlight { shared, mut record } = self;
        record.duration = record.start.elapsed();
        shared.recorder.finish(record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_text_covers_4xx_and_5xx_only() {
        assert_eq!(status_text(404), Some("404"));
        assert_eq!(status_text(599), Some("599"));
        assert_eq!(status_text(399), None);
        assert_eq!(status_text(600), None);
        assert_eq!(status_error_type(503), Some("503"));
        assert_eq!(status_error_type(404), None);
    }
}
