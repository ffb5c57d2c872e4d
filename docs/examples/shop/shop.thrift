// The service of docs/your-service.md: a small shop, to show each kind of IDL type.
namespace py shop

/** Where an item is kept. */
enum Storage {
  SHELF = 1,
  FRIDGE = 2,
  FREEZER = 3,
}

/** One line of an order. */
struct Line {
  1: required string sku,
  2: required i32 quantity,
  /** A word for whoever packs the order. */
  3: optional string note,
}

/** What a customer asks for. */
struct Order {
  1: required string customer,
  2: required list<Line> lines,
}

/** What the shop put aside for an order. */
struct Receipt {
  1: required i64 order_id,
  /** Quantity put aside, by SKU. */
  2: required map<string, i32> reserved,
  /** The coldest storage among the items: how the order must travel. */
  3: required Storage coldest,
}

/** Not enough of an item in stock. */
exception OutOfStock {
  1: string sku,
  2: i32 available,
}

/** The shop does not sell this SKU. */
exception UnknownItem {
  1: string sku,
}

/** A small shop: stock, orders and notes. */
service Shop {
  /** The stock of each SKU asked for. */
  map<string, i32> stock(1: list<string> skus) throws (1: UnknownItem unknown),

  /** Put aside every line of an order, or nothing. */
  Receipt place(1: Order order) throws (1: OutOfStock out_of_stock, 2: UnknownItem unknown),

  /** Add items to the stock. */
  void restock(1: string sku, 2: i32 quantity) throws (1: UnknownItem unknown),

  /** A note for the shopkeeper; no reply, not even an error. */
  oneway void note(1: string text),
}
