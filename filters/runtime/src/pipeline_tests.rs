//! The pipeline's own rules with recording stages on the fake host.

use super::*;
use crate::fake_host::FakeHost;

type Log = Rc<RefCell<Vec<String>>>;

/// A stage that records its callbacks and pauses where told.
struct Probe {
    name: &'static str,
    log: Log,
    pause_request: bool,
}

struct ProbeStream {
    name: &'static str,
    log: Log,
    pause_request: bool,
}

impl Stage for Probe {
    fn name(&self) -> &'static str {
        self.name
    }
    fn prepare(&self, config: &[u8]) -> Result<Commit<'_>, ValidationError> {
        if config == br#""bad""# {
            return Err(ValidationError::new("policies", "bad"));
        }
        let log = self.log.clone();
        let name = self.name;
        Ok(Box::new(move || {
            log.borrow_mut().push(format!("{name} configured"))
        }))
    }
    fn policies(&self) -> usize {
        0
    }

    fn on_grpc_call_response(&self, token: u32, status: u32) -> bool {
        let mine = token == u32::from(self.name.as_bytes()[0]);
        if mine {
            self.log
                .borrow_mut()
                .push(format!("{} grpc {token} {status}", self.name));
        }
        mine
    }

    fn stream(&self, _: u32) -> Option<Box<dyn StreamStage>> {
        Some(Box::new(ProbeStream {
            name: self.name,
            log: self.log.clone(),
            pause_request: self.pause_request,
        }))
    }
}

impl StreamStage for ProbeStream {
    fn request_headers(&mut self, _: &mut Stream<'_>) -> Flow {
        self.log.borrow_mut().push(format!("{} request", self.name));
        if self.pause_request {
            Flow::Pause
        } else {
            Flow::Continue
        }
    }
    fn response_headers(&mut self, _: &mut Stream<'_>) -> Flow {
        self.log
            .borrow_mut()
            .push(format!("{} response", self.name));
        Flow::Continue
    }
    fn done(&mut self) {
        self.log.borrow_mut().push(format!("{} done", self.name));
    }
}

fn pipeline(pause: &str) -> (Pipeline, Log) {
    FakeHost::install();
    let log = Log::default();
    let stages: Vec<Box<dyn Stage>> = ["a", "b", "c"]
        .into_iter()
        .map(|name| {
            Box::new(Probe {
                name,
                log: log.clone(),
                pause_request: name == pause,
            }) as Box<dyn Stage>
        })
        .collect();
    (Pipeline::combined(stages), log)
}

#[test]
fn root_grpc_answers_reach_the_stage_that_called() {
    let (p, log) = pipeline("");
    p.on_grpc_call_response(u32::from(b'b'), 14);
    p.on_grpc_call_response(7, 0);
    assert_eq!(
        *log.borrow(),
        ["b grpc 98 14"],
        "one stage, the caller; unknown tokens ignored"
    );
}

#[test]
fn requests_go_in_order_responses_in_reverse_and_a_pause_stops_the_pass() {
    let (p, log) = pipeline("b");
    let r = Rc::new(RefCell::new(p.request(1)));
    assert_eq!(r.borrow_mut().on_request_headers(&p, &r, true), Flow::Pause);
    assert_eq!(
        r.borrow_mut().on_response_headers(&p, &r, true),
        Flow::Continue
    );
    r.borrow_mut().on_done(&p);
    r.borrow_mut().on_done(&p);
    assert_eq!(
        *log.borrow(),
        [
            "a request",
            "b request",
            "c response",
            "b response",
            "a response",
            "a done",
            "b done",
            "c done"
        ]
    );
}

#[test]
fn sections_configure_their_stage_and_a_bad_one_changes_nothing() {
    let (p, log) = pipeline("");
    p.configure(br#"{"a": {"policies": []}, "c": {}}"#).unwrap();
    assert_eq!(
        log.borrow().len(),
        3,
        "every stage configured, absent sections empty"
    );
    let before = log.borrow().len();
    let err = p.configure(br#"{"a": {}, "b": "bad"}"#).unwrap_err();
    assert_eq!(err.field, "b.policies", "the section names the stage");
    assert!(p.configure(b"[1]").is_err());
    assert!(p.configure(br#"{"z": {}}"#).is_err());
    assert_eq!(log.borrow().len(), before, "nothing applied");
    p.configure(b"  ").unwrap();
}
