/**
 * Statement parameters as the driver binds them: each JavaScript value gets
 * the PostgreSQL type `@effect/sql-pg` gives it, so a statement behaves the
 * same through the pool as through `PgClient`.
 *
 * - `null` / `undefined`: NULL, untyped;
 * - strings: untyped text, so the server types them from the statement
 *   (a string works against a `uuid`, `bigint` or `timestamptz` column);
 * - booleans `bool`; bigints `int8`; integers `int4` (or `int8` beyond it);
 *   other numbers `float8`; `Date` `timestamptz`; bytes `bytea`;
 * - arrays: an array of their elements' type (strings as `text[]`);
 * - `PgTypes` parameters (`PgTypes.jsonb(...)`, ...) as they are.
 *
 * @internal
 */
import * as PgTypes from "@effect/sql-pg/PgTypes"

const int4Min = -2147483648
const int4Max = 2147483647

const typed = (oid: number, value: unknown): PgTypes.Parameter => ({
  [PgTypes.ParameterTypeId]: PgTypes.ParameterTypeId,
  oid,
  value
})

const untypedNull = typed(0, null)

const scalar = (value: unknown): PgTypes.Parameter => {
  if (PgTypes.isParameter(value)) return value
  if (value === null || value === undefined) return untypedNull
  switch (typeof value) {
    case "string":
      return typed(0, value)
    case "boolean":
      return typed(PgTypes.OID.bool, value)
    case "bigint":
      return typed(PgTypes.OID.int8, value)
    case "number":
      if (Number.isInteger(value)) {
        if (value >= int4Min && value <= int4Max) return typed(PgTypes.OID.int4, value)
        if (Number.isSafeInteger(value)) return typed(PgTypes.OID.int8, BigInt(value))
      }
      return typed(PgTypes.OID.float8, value)
  }
  if (value instanceof Date) return typed(PgTypes.OID.timestamptz, value)
  if (value instanceof Uint8Array) return typed(PgTypes.OID.bytea, value)
  if (value instanceof Int8Array) {
    return typed(PgTypes.OID.bytea, new Uint8Array(value.buffer, value.byteOffset, value.byteLength))
  }
  throw new PgTypes.CodecError({ message: `Cannot infer a PostgreSQL type for ${describe(value)}` })
}

/** A value in words for an error, without calling code the value may carry. */
const describe = (value: unknown): string => Object.prototype.toString.call(value)

const array = (values: ReadonlyArray<unknown>, registry: PgTypes.Registry | undefined): PgTypes.Parameter => {
  // An empty array's type comes from the statement, as an untyped string's does.
  if (values.length === 0) return typed(0, "{}")
  let elementOid: number | undefined
  const elements: Array<unknown> = new Array(values.length)
  for (let i = 0; i < values.length; i++) {
    if (Array.isArray(values[i])) throw new PgTypes.CodecError({ message: "Nested array parameters are not supported" })
    const element = scalar(values[i])
    if (element.value === null) {
      elements[i] = null
      continue
    }
    if (Array.isArray(element.value)) {
      throw new PgTypes.CodecError({ message: "Nested array parameters are not supported" })
    }
    // A lone string binds untyped, but inside an array it is text.
    const oid = element.oid === 0 ? PgTypes.OID.text : element.oid
    if (elementOid === undefined) elementOid = oid
    else if (elementOid !== oid) {
      throw new PgTypes.CodecError({ message: "Array parameter elements must have the same inferred OID" })
    }
    elements[i] = element.value
  }
  if (elementOid === undefined) {
    throw new PgTypes.CodecError({ message: "Cannot infer the type of an array containing only null values" })
  }
  const arrayOid = PgTypes.arrayOidFor(elementOid, registry)
  if (arrayOid === undefined) throw new PgTypes.CodecError({ message: `No array type known for element OID ${elementOid}` })
  return typed(arrayOid, elements)
}

/**
 * The parameter a value binds as. Throws `PgTypes.CodecError` for a value
 * with no PostgreSQL type.
 *
 * @internal
 */
export const infer = (value: unknown, registry: PgTypes.Registry | undefined): PgTypes.Parameter =>
  Array.isArray(value) ? array(value, registry) : scalar(value)
