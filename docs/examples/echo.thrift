// The service of the library examples (docs/library.md).
namespace py echo

service Echo {
  /** Returns its argument. */
  string echo(1: string text),

  /** Sums two integers. */
  i64 add(1: i64 a, 2: i64 b),

  /** Waits `seconds` without using the CPU. */
  void sleep(1: double seconds),

  /** Raises an undeclared exception: a bug in the handler. */
  void fail(1: string why),
}
