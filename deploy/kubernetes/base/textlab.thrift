// textlab: the demo service of offloop. Real work of each kind a worker tier meets:
// light calls, pure-Python CPU work (parse, burn), GIL-releasing work (crunch, embed)
// and waiting (sleep).
namespace py textlab

/**
 * A node of a syntax tree: a phrase (label such as NP, children) or a word (a leaf: label its
 * part of speech such as N or Det, no children, `word` set).
 */
struct TreeNode {
  1: required string label,
  /** Indexes into ParseResult.nodes; empty for a leaf. */
  2: list<i32> children = [],
  /** The word, for a leaf; absent for a phrase. */
  3: optional string word,
}

struct ParseResult {
  /** The tree in bracketed (Penn-style) notation, on one line: "(S (NP (Det the) (Nom (N dog))) ...)". */
  1: required string bracketed,
  /** The tree as a flat list of nodes in pre-order; nodes[0] is the root. */
  2: required list<TreeNode> nodes,
  /** How many parses the grammar allows, counted up to 1000; the first is returned. */
  3: required i32 ambiguity,
}

/** The sentence is not covered by the grammar. */
exception ParseError {
  1: string message,
  /** Words the grammar's lexicon does not know. */
  2: list<string> unknown_words = [],
}

/** An argument is outside what the service accepts. */
exception InvalidArgument {
  1: string message,
}

service TextLab {
  /** Light: echoes its argument (up to 64 KiB of UTF-8). */
  string ping(1: string msg),

  /**
   * Real syntactic parsing (NLTK's Earley chart parser, a shipped English grammar) of a
   * sentence of 1 to 40 words; words are lowercased and .,!?;: stripped.
   */
  ParseResult parse(1: string sentence) throws (1: ParseError error, 2: InvalidArgument invalid),

  /** Calibrated pure-Python CPU work for about `millis` ms; returns the iterations run. */
  i64 burn(1: i32 millis) throws (1: InvalidArgument invalid),

  /** numpy work that releases the GIL (an n x n matrix product); returns a checksum. */
  double crunch(1: i32 n) throws (1: InvalidArgument invalid),

  /** Waits `millis` ms without using CPU; returns the ms actually waited. */
  double sleep(1: i32 millis) throws (1: InvalidArgument invalid),

  /** Sentence embeddings (all-MiniLM-L6-v2, 384 dimensions), one per text. */
  list<list<double>> embed(1: list<string> texts) throws (1: InvalidArgument invalid),
}
