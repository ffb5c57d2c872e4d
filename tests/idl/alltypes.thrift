// alltypes: a test IDL with every Thrift type, for the JSON mapping and the OpenAPI builder.
// Modelled on Apache Thrift's ThriftTest.thrift (Xtruct, Xtruct2, Insanity...).
namespace py alltypes

enum Numberz {
  ONE = 1,
  TWO = 2,
  THREE = 3,
  FIVE = 5,
  SIX = 6,
  EIGHT = 8,
}

typedef i64 UserId
typedef list<string> Words

struct Bonk {
  1: string message,
  2: i32 type,
}

struct Xtruct {
  1: string string_thing,
  4: byte byte_thing,
  9: i32 i32_thing,
  11: i64 i64_thing,
}

struct Xtruct2 {
  1: i8 byte_thing,
  2: Xtruct struct_thing,
  3: i32 i32_thing,
}

/** Every scalar type, with required, optional and default-valued fields. */
struct Scalars {
  1: required bool a_bool,
  2: byte a_byte,
  3: i16 an_i16,
  4: i32 an_i32,
  5: i64 an_i64,
  6: double a_double,
  7: string a_string,
  8: binary a_binary,
  9: Numberz an_enum,
  10: UserId user_id,
  11: optional string opt_string,
  12: i32 with_default = 42,
  13: optional Numberz opt_enum = Numberz.TWO,
  14: Words words,
}

struct Insanity {
  1: map<Numberz, UserId> userMap,
  2: list<Xtruct> xtructs,
}

/** Containers of every kind, including those that map to pairs. */
struct Containers {
  1: list<i32> ints,
  2: set<string> strings,
  3: map<i32, string> by_int,
  4: map<string, double> by_string,
  5: map<Numberz, Xtruct> by_enum,
  6: map<Bonk, i32> by_struct,
  7: list<list<Xtruct>> nested,
  8: map<i64, list<set<i16>>> deep,
  9: set<binary> blobs,
  10: map<bool, string> by_bool,
  11: map<double, string> by_double,
  12: map<binary, i8> by_binary,
  13: list<map<string, Numberz>> enum_maps,
  14: set<Numberz> enum_set,
}

/** A recursive struct: a tree. */
struct Node {
  1: required string label,
  2: list<Node> children = [],
  3: optional Node parent_hint,
}

exception Xception {
  1: i32 errorCode,
  2: string message,
}

exception Xception2 {
  1: i32 errorCode,
  2: Xtruct struct_thing,
}

service AllTypes {
  void testVoid(),
  string testString(1: string thing),
  bool testBool(1: bool thing),
  byte testByte(1: byte thing),
  i32 testI32(1: i32 thing),
  i64 testI64(1: i64 thing),
  double testDouble(1: double thing),
  binary testBinary(1: binary thing),
  Xtruct testStruct(1: Xtruct thing),
  Xtruct2 testNest(1: Xtruct2 thing),
  map<i32, i32> testMap(1: map<i32, i32> thing),
  set<i32> testSet(1: set<i32> thing),
  list<i32> testList(1: list<i32> thing),
  Numberz testEnum(1: Numberz thing),
  UserId testTypedef(1: UserId thing),
  map<i32, map<i32, i32>> testMapMap(1: i32 hello),
  map<UserId, map<Numberz, Insanity>> testInsanity(1: Insanity argument),
  Xtruct testMulti(1: byte arg0, 2: i32 arg1, 3: i64 arg2, 4: map<i16, string> arg3,
                   5: Numberz arg4, 6: UserId arg5),
  void testException(1: string arg) throws (1: Xception err1),
  Xtruct testMultiException(1: string arg0, 2: string arg1)
      throws (1: Xception err1, 2: Xception2 err2),
  oneway void testOneway(1: i32 secondsToSleep),
  i32 sumXtructs(1: required list<Xtruct> xtructs, 2: i32 scale = 1),
  Scalars echoScalars(1: Scalars s),
  Containers echoContainers(1: Containers c),
  Node echoTree(1: Node root),
  list<list<Xtruct>> grid(1: list<list<Xtruct>> rows, 2: optional string label),
}

service Second {
  string hello(1: string name),
  Node tree(1: i32 depth) throws (1: Xception err),
}
