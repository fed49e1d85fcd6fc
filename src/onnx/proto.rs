//! The subset of `onnx.proto` (ONNX IR version 3 and later) that mpc reads
//! and writes, as prost messages.
//!
//! Written by hand from onnx.proto rather than generated so that building mpc
//! needs no `protoc`. Field numbers are onnx.proto's; fields mpc never reads
//! (training info, functions, sparse tensors, sharding) are left out, and
//! prost skips them when decoding.

/// `TensorProto.DataType` values.
pub mod data_type {
    pub const FLOAT: i32 = 1;
    pub const UINT8: i32 = 2;
    pub const INT8: i32 = 3;
    pub const INT32: i32 = 6;
    pub const INT64: i32 = 7;
    pub const BOOL: i32 = 9;
    pub const FLOAT16: i32 = 10;
    pub const DOUBLE: i32 = 11;
    pub const BFLOAT16: i32 = 16;

    pub fn name(t: i32) -> &'static str {
        match t {
            0 => "UNDEFINED",
            1 => "FLOAT",
            2 => "UINT8",
            3 => "INT8",
            4 => "UINT16",
            5 => "INT16",
            6 => "INT32",
            7 => "INT64",
            8 => "STRING",
            9 => "BOOL",
            10 => "FLOAT16",
            11 => "DOUBLE",
            12 => "UINT32",
            13 => "UINT64",
            14 => "COMPLEX64",
            15 => "COMPLEX128",
            16 => "BFLOAT16",
            _ => "a float8/int4 or newer type",
        }
    }
}

/// `AttributeProto.AttributeType` values.
pub mod attr_type {
    pub const FLOAT: i32 = 1;
    pub const INT: i32 = 2;
    pub const STRING: i32 = 3;
    pub const TENSOR: i32 = 4;
    pub const GRAPH: i32 = 5;
    pub const FLOATS: i32 = 6;
    pub const INTS: i32 = 7;
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelProto {
    #[prost(int64, optional, tag = "1")]
    pub ir_version: Option<i64>,
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    #[prost(string, optional, tag = "2")]
    pub producer_name: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub producer_version: Option<String>,
    #[prost(string, optional, tag = "4")]
    pub domain: Option<String>,
    #[prost(int64, optional, tag = "5")]
    pub model_version: Option<i64>,
    #[prost(string, optional, tag = "6")]
    pub doc_string: Option<String>,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct OperatorSetIdProto {
    #[prost(string, optional, tag = "1")]
    pub domain: Option<String>,
    #[prost(int64, optional, tag = "2")]
    pub version: Option<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StringStringEntryProto {
    #[prost(string, optional, tag = "1")]
    pub key: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(string, optional, tag = "2")]
    pub name: Option<String>,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    #[prost(string, optional, tag = "10")]
    pub doc_string: Option<String>,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "13")]
    pub value_info: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, optional, tag = "3")]
    pub name: Option<String>,
    #[prost(string, optional, tag = "4")]
    pub op_type: Option<String>,
    #[prost(string, optional, tag = "7")]
    pub domain: Option<String>,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    #[prost(string, optional, tag = "6")]
    pub doc_string: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeProto {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(string, optional, tag = "21")]
    pub ref_attr_name: Option<String>,
    #[prost(string, optional, tag = "13")]
    pub doc_string: Option<String>,
    #[prost(int32, optional, tag = "20")]
    pub r#type: Option<i32>,
    #[prost(float, optional, tag = "2")]
    pub f: Option<f32>,
    #[prost(int64, optional, tag = "3")]
    pub i: Option<i64>,
    #[prost(bytes = "vec", optional, tag = "4")]
    pub s: Option<Vec<u8>>,
    #[prost(message, optional, tag = "5")]
    pub t: Option<TensorProto>,
    #[prost(message, optional, tag = "6")]
    pub g: Option<GraphProto>,
    #[prost(float, repeated, packed = "false", tag = "7")]
    pub floats: Vec<f32>,
    #[prost(int64, repeated, packed = "false", tag = "8")]
    pub ints: Vec<i64>,
    #[prost(bytes = "vec", repeated, tag = "9")]
    pub strings: Vec<Vec<u8>>,
    #[prost(message, repeated, tag = "10")]
    pub tensors: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    pub graphs: Vec<GraphProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueInfoProto {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
    #[prost(string, optional, tag = "3")]
    pub doc_string: Option<String>,
}

impl ValueInfoProto {
    /// A tensor of element type `elem` and static `dims`.
    pub fn tensor(name: impl Into<String>, elem: i32, dims: &[u64]) -> ValueInfoProto {
        let dim = dims.iter().map(|&d| Dimension { value: Some(DimensionValue::DimValue(d as i64)), denotation: None });
        ValueInfoProto {
            name: Some(name.into()),
            r#type: Some(TypeProto {
                value: Some(TypeValue::TensorType(TensorTypeProto {
                    elem_type: Some(elem),
                    shape: Some(TensorShapeProto { dim: dim.collect() }),
                })),
                denotation: None,
            }),
            doc_string: None,
        }
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    #[prost(int64, repeated, packed = "false", tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, optional, tag = "2")]
    pub data_type: Option<i32>,
    #[prost(float, repeated, tag = "4")]
    pub float_data: Vec<f32>,
    #[prost(int32, repeated, tag = "5")]
    pub int32_data: Vec<i32>,
    #[prost(bytes = "vec", repeated, tag = "6")]
    pub string_data: Vec<Vec<u8>>,
    #[prost(int64, repeated, tag = "7")]
    pub int64_data: Vec<i64>,
    #[prost(string, optional, tag = "8")]
    pub name: Option<String>,
    #[prost(string, optional, tag = "12")]
    pub doc_string: Option<String>,
    /// Shared with the buffer the model was decoded from (no copy).
    #[prost(bytes = "bytes", optional, tag = "9")]
    pub raw_data: Option<bytes::Bytes>,
    #[prost(message, repeated, tag = "13")]
    pub external_data: Vec<StringStringEntryProto>,
    #[prost(int32, optional, tag = "14")]
    pub data_location: Option<i32>,
    #[prost(double, repeated, tag = "10")]
    pub double_data: Vec<f64>,
    #[prost(uint64, repeated, tag = "11")]
    pub uint64_data: Vec<u64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Dimension {
    #[prost(oneof = "DimensionValue", tags = "1, 2")]
    pub value: Option<DimensionValue>,
    #[prost(string, optional, tag = "3")]
    pub denotation: Option<String>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum DimensionValue {
    #[prost(int64, tag = "1")]
    DimValue(i64),
    #[prost(string, tag = "2")]
    DimParam(String),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeProto {
    #[prost(oneof = "TypeValue", tags = "1")]
    pub value: Option<TypeValue>,
    #[prost(string, optional, tag = "6")]
    pub denotation: Option<String>,
}

/// Only tensor types: sequences, maps and optionals are not mpc's business
/// (prost leaves the oneof empty for them, and the importer says so).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum TypeValue {
    #[prost(message, tag = "1")]
    TensorType(TensorTypeProto),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorTypeProto {
    #[prost(int32, optional, tag = "1")]
    pub elem_type: Option<i32>,
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

/// Decodes a model for import: as `ModelProto::decode`, but the graph's
/// `value_info` (the shapes a producer recorded for intermediate values) is
/// skipped, not decoded: the importer infers every shape itself, and on a
/// small model those nested messages were a quarter of the decoding time
/// (SqueezeNet: 39 µs with them, 30 µs without).
pub fn decode_for_import(buf: bytes::Bytes) -> Result<ModelProto, prost::DecodeError> {
    let mut m = ModelProto::default();
    prost::Message::merge(&mut ForImport(&mut m), buf)?;
    Ok(m)
}

/// The model's fields, with the graph decoded by [`GraphForImport`].
struct ForImport<'a>(&'a mut ModelProto);

/// The graph's fields but `value_info`.
struct GraphForImport<'a>(&'a mut GraphProto);

const MODEL_GRAPH: u32 = 7;
const GRAPH_VALUE_INFO: u32 = 13;

/// A decoding wrapper: `merge_field` as given, encoding (never called) as
/// the message it wraps.
macro_rules! decoding_wrapper {
    ($ty:ident, |$me:ident, $tag:ident, $wire:ident, $buf:ident, $ctx:ident| $merge:block) => {
        impl prost::Message for $ty<'_> {
            fn merge_field(
                &mut self,
                $tag: u32,
                $wire: prost::encoding::WireType,
                $buf: &mut impl bytes::Buf,
                $ctx: prost::encoding::DecodeContext,
            ) -> Result<(), prost::DecodeError> {
                let $me = self;
                $merge
            }
            fn encode_raw(&self, buf: &mut impl bytes::BufMut) {
                self.0.encode_raw(buf)
            }
            fn encoded_len(&self) -> usize {
                self.0.encoded_len()
            }
            fn clear(&mut self) {
                self.0.clear()
            }
        }
    };
}

decoding_wrapper!(ForImport, |me, tag, wire, buf, ctx| {
    if tag != MODEL_GRAPH {
        return me.0.merge_field(tag, wire, buf, ctx);
    }
    let graph = me.0.graph.get_or_insert_with(GraphProto::default);
    prost::encoding::message::merge(wire, &mut GraphForImport(graph), buf, ctx).map_err(|mut e| {
        e.push("ModelProto", "graph");
        e
    })
});

decoding_wrapper!(GraphForImport, |me, tag, wire, buf, ctx| {
    if tag == GRAPH_VALUE_INFO {
        // Refused as prost refuses it: a value_info that is not a message.
        prost::encoding::check_wire_type(prost::encoding::WireType::LengthDelimited, wire)?;
        return prost::encoding::skip_field(wire, tag, buf, ctx);
    }
    me.0.merge_field(tag, wire, buf, ctx)
});

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn round_trips_a_small_model() {
        let m = ModelProto {
            ir_version: Some(8),
            opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(17) }],
            graph: Some(GraphProto {
                name: Some("g".into()),
                node: vec![NodeProto {
                    input: vec!["x".into()],
                    output: vec!["y".into()],
                    op_type: Some("Relu".into()),
                    ..Default::default()
                }],
                initializer: vec![TensorProto {
                    dims: vec![2],
                    data_type: Some(data_type::FLOAT),
                    float_data: vec![1.0, 2.0],
                    name: Some("w".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let bytes = m.encode_to_vec();
        assert_eq!(ModelProto::decode(bytes.as_slice()).unwrap(), m);
    }

    fn value_info(name: &str) -> ValueInfoProto {
        ValueInfoProto::tensor(name, data_type::FLOAT, &[3])
    }

    #[test]
    fn decoding_for_import_is_decoding_without_value_info() {
        let graph = GraphProto {
            node: vec![NodeProto {
                op_type: Some("Relu".into()),
                input: vec!["x".into()],
                output: vec!["y".into()],
                ..Default::default()
            }],
            name: Some("g".into()),
            input: vec![value_info("x")],
            output: vec![value_info("y")],
            value_info: vec![value_info("h"), value_info("k")],
            ..Default::default()
        };
        let m = ModelProto {
            ir_version: Some(8),
            opset_import: vec![OperatorSetIdProto { domain: None, version: Some(17) }],
            graph: Some(graph),
            ..Default::default()
        };
        let bytes = bytes::Bytes::from(m.encode_to_vec());
        let mut want = ModelProto::decode(bytes.clone()).unwrap();
        want.graph.as_mut().unwrap().value_info.clear();
        assert_eq!(decode_for_import(bytes.clone()).unwrap(), want);
        // A value_info of the wrong wire type (a varint): refused, as by prost.
        let mut bad = bytes.to_vec();
        let graph = ModelProto { graph: Some(GraphProto::default()), ..Default::default() }.encode_to_vec();
        assert_eq!(graph, [0x3a, 0]);
        bad.extend([0x3a, 2, (13 << 3) as u8, 1]);
        assert!(ModelProto::decode(&bad[..]).is_err());
        assert!(decode_for_import(bytes::Bytes::from(bad)).is_err());
        // Truncated inside the graph: an error that says where, as from prost.
        let cut = bytes.slice(..bytes.len() / 2);
        assert!(ModelProto::decode(cut.clone()).is_err());
        let e = decode_for_import(cut).unwrap_err().to_string();
        assert!(e.contains("ModelProto.graph"), "{e}");
    }
}
