// Two services with a method name in common (ping), for the tests of several services on
// one worker (tests/worker/test_services.py, tests/interop/test_multiplexed.py).
namespace py two_services

exception Refused {
  1: string reason
}

service Calc {
  string ping(1: string msg),
  i32 add(1: i32 a, 2: i32 b),
  i32 divide(1: i32 a, 2: i32 b) throws (1: Refused refused),
  string hold(1: string gate),
}

service Echo {
  string ping(1: string msg),
  string echo(1: string text),
  string upper(1: string text),
  string later(1: string text),
  string shout(1: string text),
}
