//! A model's protobuf encoding as a list of chunks, so that large
//! initializer data (hundreds of MB for a real model) goes from the buffer
//! it was converted into to the file without being copied into one message
//! buffer first.
//!
//! Protobuf lets a message's fields come in any order, so the graph is
//! written as its other fields followed by its initializers, each
//! initializer as its other fields followed by its `raw_data`; readers
//! (onnx, onnxruntime, prost) see the same message.

use bytes::{BufMut, Bytes};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use prost::Message;

use super::proto::{Dimension, DimensionValue, GraphProto, ModelProto, NodeProto, TypeValue, ValueInfoProto};

/// `raw_data` of at least this many bytes is written as its own chunk.
const OWN_CHUNK: usize = 4 << 10;

const MODEL_GRAPH: u32 = 7;
const GRAPH_INITIALIZER: u32 = 5;
const TENSOR_RAW_DATA: u32 = 9;

fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// The encoding of `m`: the concatenation of the chunks is a valid
/// serialization of the same message.
pub fn encode(mut m: ModelProto) -> Vec<Bytes> {
    let Some(mut graph) = m.graph.take() else {
        return vec![Bytes::from(m.encode_to_vec())];
    };
    let mut inits = std::mem::take(&mut graph.initializer);
    // Each initializer without its large raw_data, and that data.
    let big: Vec<Option<Bytes>> = inits
        .iter_mut()
        .map(|t| match &t.raw_data {
            Some(raw) if raw.len() >= OWN_CHUNK => t.raw_data.take(),
            _ => None,
        })
        .collect();
    let init_lens: Vec<usize> = inits
        .iter()
        .zip(&big)
        .map(|(t, raw)| t.encoded_len() + raw.as_ref().map_or(0, |r| delimited_len(TENSOR_RAW_DATA, r.len())))
        .collect();
    let lens = GraphLens::of(&graph);
    let graph_len = lens.total + init_lens.iter().map(|&l| delimited_len(GRAPH_INITIALIZER, l)).sum::<usize>();

    // Everything but the large data goes into one buffer, sized exactly;
    // `splits` records where each large datum goes between its bytes.
    let total = m.encoded_len() + delimited_len(MODEL_GRAPH, graph_len);
    let outside: usize = big.iter().flatten().map(|b| b.len()).sum();
    let mut buf = Vec::with_capacity(total - outside);
    let mut splits = Vec::new();
    m.encode_raw(&mut buf);
    encode_key(MODEL_GRAPH, WireType::LengthDelimited, &mut buf);
    encode_varint(graph_len as u64, &mut buf);
    lens.encode(&graph, &mut buf);
    for ((t, raw), len) in inits.iter().zip(big).zip(init_lens) {
        encode_key(GRAPH_INITIALIZER, WireType::LengthDelimited, &mut buf);
        encode_varint(len as u64, &mut buf);
        t.encode_raw(&mut buf);
        if let Some(raw) = raw {
            encode_key(TENSOR_RAW_DATA, WireType::LengthDelimited, &mut buf);
            encode_varint(raw.len() as u64, &mut buf);
            splits.push((buf.len(), raw));
        }
    }
    let buf = Bytes::from(buf);
    let mut chunks = Vec::with_capacity(2 * splits.len() + 1);
    let mut at = 0;
    for (end, raw) in splits {
        if end > at {
            chunks.push(buf.slice(at..end));
        }
        chunks.push(raw);
        at = end;
    }
    if buf.len() > at {
        chunks.push(buf.slice(at..));
    }
    chunks
}

/// The lengths of a graph's nested messages (but its initializers), each
/// computed once. prost computes a nested message's length again at every
/// level it is nested in (a value_info's dims five times over), which was
/// most of the encoding of a small model's graph.
struct GraphLens {
    /// Each node's length, then each of its attributes' (prost's).
    nodes: Vec<usize>,
    attrs: Vec<usize>,
    /// The graph's inputs, outputs and value_infos, in that order.
    values: Vec<ValueLen>,
    /// The graph's fields but its initializers.
    total: usize,
}

/// A tensor value's nested lengths: the shape, the tensor type, the type,
/// the whole; or another value's length as prost computes it (encoded by
/// prost).
#[derive(Clone, Copy)]
enum ValueLen {
    Tensor { shape: usize, tensor: usize, ty: usize, whole: usize },
    Other(usize),
}

const GRAPH_NODE: u32 = 1;
const GRAPH_NAME: u32 = 2;
const GRAPH_DOC: u32 = 10;
const GRAPH_INPUT: u32 = 11;
const GRAPH_OUTPUT: u32 = 12;
const GRAPH_VALUE_INFO: u32 = 13;

fn str_len(tag: u32, s: &str) -> usize {
    delimited_len(tag, s.len())
}

fn opt_str_len(tag: u32, s: &Option<String>) -> usize {
    s.as_ref().map_or(0, |s| str_len(tag, s))
}

fn put_str(tag: u32, s: &str, buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(s.len() as u64, buf);
    buf.put_slice(s.as_bytes());
}

fn put_opt_str(tag: u32, s: &Option<String>, buf: &mut Vec<u8>) {
    if let Some(s) = s {
        put_str(tag, s, buf);
    }
}

fn put_len(tag: u32, len: usize, buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

/// The dims of a value that is a tensor with a static shape and nothing
/// else set (what the export writes); `None` for anything else.
fn tensor_value(v: &ValueInfoProto) -> Option<(i32, &[Dimension])> {
    let ty = v.r#type.as_ref().filter(|t| t.denotation.is_none() && v.doc_string.is_none() && v.name.is_some())?;
    let Some(TypeValue::TensorType(t)) = &ty.value else { return None };
    let (elem, shape) = (t.elem_type?, t.shape.as_ref()?);
    let simple = |d: &Dimension| d.denotation.is_none() && matches!(d.value, Some(DimensionValue::DimValue(_)));
    shape.dim.iter().all(simple).then_some((elem, &shape.dim[..]))
}

fn dim_value(d: &Dimension) -> u64 {
    match d.value {
        Some(DimensionValue::DimValue(v)) => v as u64,
        _ => unreachable!("tensor_value admits only dim values"),
    }
}

impl ValueLen {
    fn of(v: &ValueInfoProto) -> ValueLen {
        let Some((elem, dims)) = tensor_value(v) else { return ValueLen::Other(v.encoded_len()) };
        // Each dim: a message holding field 1, a varint.
        let shape: usize = dims.iter().map(|d| delimited_len(1, key_len(1) + encoded_len_varint(dim_value(d)))).sum();
        let tensor = key_len(1) + encoded_len_varint(elem as i64 as u64) + delimited_len(2, shape);
        let ty = delimited_len(1, tensor);
        let whole = opt_str_len(1, &v.name) + delimited_len(2, ty);
        ValueLen::Tensor { shape, tensor, ty, whole }
    }

    fn whole(self) -> usize {
        match self {
            ValueLen::Tensor { whole, .. } | ValueLen::Other(whole) => whole,
        }
    }

    fn encode(self, tag: u32, v: &ValueInfoProto, buf: &mut Vec<u8>) {
        put_len(tag, self.whole(), buf);
        let ValueLen::Tensor { shape, tensor, ty, .. } = self else { return v.encode_raw(buf) };
        let Some((elem, dims)) = tensor_value(v) else { unreachable!("measured as a tensor") };
        put_opt_str(1, &v.name, buf);
        put_len(2, ty, buf);
        put_len(1, tensor, buf);
        encode_key(1, WireType::Varint, buf);
        encode_varint(elem as i64 as u64, buf);
        put_len(2, shape, buf);
        for d in dims {
            let d = dim_value(d);
            put_len(1, key_len(1) + encoded_len_varint(d), buf);
            encode_key(1, WireType::Varint, buf);
            encode_varint(d, buf);
        }
    }
}

fn node_len(n: &NodeProto, attrs: &mut Vec<usize>) -> usize {
    let strs = |tag, v: &[String]| v.iter().map(|s| str_len(tag, s)).sum::<usize>();
    let mut len = strs(1, &n.input) + strs(2, &n.output) + opt_str_len(3, &n.name) + opt_str_len(4, &n.op_type);
    for a in &n.attribute {
        let l = a.encoded_len();
        attrs.push(l);
        len += delimited_len(5, l);
    }
    len + opt_str_len(6, &n.doc_string) + opt_str_len(7, &n.domain)
}

/// Encodes `n`'s fields (in tag order, as prost does); `attrs` holds (at
/// least) its attributes' lengths.
fn encode_node(n: &NodeProto, attrs: &[usize], buf: &mut Vec<u8>) {
    n.input.iter().for_each(|s| put_str(1, s, buf));
    n.output.iter().for_each(|s| put_str(2, s, buf));
    put_opt_str(3, &n.name, buf);
    put_opt_str(4, &n.op_type, buf);
    for (a, &len) in n.attribute.iter().zip(attrs) {
        put_len(5, len, buf);
        a.encode_raw(buf);
    }
    put_opt_str(6, &n.doc_string, buf);
    put_opt_str(7, &n.domain, buf);
}

/// The graph's inputs, outputs and value_infos, each with its field's tag.
fn tagged_values(g: &GraphProto) -> impl Iterator<Item = (u32, &ValueInfoProto)> {
    [(GRAPH_INPUT, &g.input), (GRAPH_OUTPUT, &g.output), (GRAPH_VALUE_INFO, &g.value_info)]
        .into_iter()
        .flat_map(|(tag, v)| v.iter().map(move |x| (tag, x)))
}

impl GraphLens {
    /// Measures `g`, whose initializers are encoded separately.
    fn of(g: &GraphProto) -> GraphLens {
        let mut attrs = Vec::new();
        let nodes: Vec<usize> = g.node.iter().map(|n| node_len(n, &mut attrs)).collect();
        let (mut values, mut value_bytes) = (Vec::new(), 0);
        for (tag, v) in tagged_values(g) {
            let len = ValueLen::of(v);
            value_bytes += delimited_len(tag, len.whole());
            values.push(len);
        }
        let total = nodes.iter().map(|&l| delimited_len(GRAPH_NODE, l)).sum::<usize>()
            + opt_str_len(GRAPH_NAME, &g.name)
            + opt_str_len(GRAPH_DOC, &g.doc_string)
            + value_bytes;
        GraphLens { nodes, attrs, values, total }
    }

    /// Encodes `g`'s fields but its initializers, in tag order (as prost does).
    fn encode(&self, g: &GraphProto, buf: &mut Vec<u8>) {
        debug_assert!(g.initializer.is_empty(), "initializers are encoded separately");
        let mut attrs = &self.attrs[..];
        for (n, &len) in g.node.iter().zip(&self.nodes) {
            put_len(GRAPH_NODE, len, buf);
            encode_node(n, attrs, buf);
            attrs = &attrs[n.attribute.len().min(attrs.len())..];
        }
        put_opt_str(GRAPH_NAME, &g.name, buf);
        put_opt_str(GRAPH_DOC, &g.doc_string, buf);
        for ((tag, v), len) in tagged_values(g).zip(&self.values) {
            len.encode(tag, v, buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::proto::{
        attr_type, data_type, AttributeProto, NodeProto, TensorProto, TensorShapeProto, TensorTypeProto, TypeProto,
    };
    use super::*;

    fn tensor(name: &str, bytes: usize) -> TensorProto {
        TensorProto {
            dims: vec![(bytes / 4) as i64],
            data_type: Some(data_type::FLOAT),
            name: Some(name.into()),
            raw_data: Some(Bytes::from((0..bytes).map(|i| (i * 7) as u8).collect::<Vec<u8>>())),
            ..Default::default()
        }
    }

    #[test]
    fn chunks_decode_to_the_same_model() {
        let graph = GraphProto {
            node: vec![NodeProto { op_type: Some("Relu".into()), input: vec!["x".into()], ..Default::default() }],
            name: Some("g".into()),
            initializer: vec![
                tensor("small", 16),
                tensor("big", OWN_CHUNK * 3),
                tensor("tiny", 4),
                tensor("b2", OWN_CHUNK),
            ],
            ..Default::default()
        };
        let m = ModelProto {
            ir_version: Some(8),
            producer_name: Some("t".into()),
            graph: Some(graph),
            ..Default::default()
        };
        let chunks = encode(m.clone());
        // The two large tensors' data are chunks of their own, not copies.
        assert_eq!(chunks.iter().filter(|c| c.len() >= OWN_CHUNK).count(), 2);
        let joined: Vec<u8> = chunks.concat();
        assert_eq!(joined.len(), m.encoded_len());
        assert_eq!(ModelProto::decode(&joined[..]).unwrap(), m);
        // No graph: one chunk.
        let bare = ModelProto { ir_version: Some(8), ..Default::default() };
        assert_eq!(encode(bare.clone()).concat(), bare.encode_to_vec());
    }

    /// Every kind of value and node field the graph encoder measures itself.
    fn graph_of_every_shape() -> GraphProto {
        let symbolic = ValueInfoProto {
            name: Some("x".into()),
            r#type: Some(TypeProto {
                value: Some(TypeValue::TensorType(TensorTypeProto {
                    elem_type: Some(data_type::FLOAT),
                    shape: Some(TensorShapeProto {
                        dim: vec![
                            Dimension { value: Some(DimensionValue::DimParam("batch".into())), denotation: None },
                            Dimension { value: Some(DimensionValue::DimValue(300)), denotation: None },
                        ],
                    }),
                })),
                denotation: None,
            }),
            doc_string: None,
        };
        let mut documented = ValueInfoProto::tensor("h", data_type::FLOAT16, &[2, 300]);
        documented.doc_string = Some("kept".into());
        let attr = AttributeProto {
            name: Some("value".into()),
            r#type: Some(attr_type::TENSOR),
            t: Some(tensor("v", 4)),
            ..Default::default()
        };
        let node = NodeProto {
            input: vec!["x".into(), String::new(), "w".repeat(200)],
            output: vec!["y".into()],
            name: Some("n".into()),
            op_type: Some("ConstantOfShape".into()),
            attribute: vec![attr, AttributeProto { name: Some("to".into()), i: Some(-1), ..Default::default() }],
            doc_string: Some("d".into()),
            domain: Some(String::new()),
        };
        GraphProto {
            node: vec![node, NodeProto::default()],
            name: Some("g".into()),
            doc_string: Some("graph".into()),
            input: vec![symbolic, ValueInfoProto::tensor("w", data_type::FLOAT, &[])],
            output: vec![ValueInfoProto::tensor("y", data_type::FLOAT16, &[1 << 40, 0, 127, 128])],
            value_info: vec![documented, ValueInfoProto::default(), ValueInfoProto::tensor("z", -1, &[3])],
            ..Default::default()
        }
    }

    #[test]
    fn the_graph_is_encoded_as_prost_encodes_it() {
        let m = ModelProto { ir_version: Some(8), graph: Some(graph_of_every_shape()), ..Default::default() };
        // No initializers: the same bytes as prost's, field for field.
        assert_eq!(encode(m.clone()).concat(), m.encode_to_vec());
        let mut with_data = m.clone();
        with_data.graph.as_mut().unwrap().initializer = vec![tensor("big", OWN_CHUNK), tensor("small", 8)];
        let joined = encode(with_data.clone()).concat();
        assert_eq!(joined.len(), with_data.encoded_len());
        assert_eq!(ModelProto::decode(&joined[..]).unwrap(), with_data);
    }
}
