'use strict';
// speech2image-triton from Node: `speech_to_image` over ModelInfer and `speech_to_image_stream`
// over ModelStreamInfer, with @grpc/grpc-js and the descriptors `s2i contract --descriptor-set`
// writes from the installed tritonclient (no .proto files are vendored). What each model takes
// and returns: docs/contract.md.
//
//   node speech_to_image.js --url localhost:8001 --descriptors triton.pb --audio speech.wav \
//        [--seed 7] [--steps 3] [--max-new-tokens 8] [--preview-every 1] [--header authorization=...]
//
// Prints one JSON object: the pipeline's answer and the stream's messages.

const crypto = require('crypto');
const fs = require('fs');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

// Outputs asked of `speech_to_image`: any subset works (docs/contract.md).
const PIPELINE_OUTPUTS = ['text', 'emotion', 'emotion_label', 'emotion_probabilities', 'prompt', 'image_seed', 'png'];

function parseArgs(argv) {
  const args = { seed: 7, steps: 3, maxNewTokens: 8, previewEvery: 1, headers: [] };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`\`${flag}\` needs a value`);
    if (flag === '--url') args.url = value;
    else if (flag === '--descriptors') args.descriptors = value;
    else if (flag === '--audio') args.audio = value;
    else if (flag === '--seed') args.seed = Number(value);
    else if (flag === '--steps') args.steps = Number(value);
    else if (flag === '--max-new-tokens') args.maxNewTokens = Number(value);
    else if (flag === '--preview-every') args.previewEvery = Number(value);
    else if (flag === '--header') args.headers.push(value.split(/=(.*)/s).slice(0, 2));
    else throw new Error(`unknown option \`${flag}\``);
  }
  for (const required of ['url', 'descriptors', 'audio']) {
    if (!args[required]) throw new Error(`\`--${required}\` is required`);
  }
  return args;
}

function loadService(descriptorsPath, url) {
  const definition = protoLoader.loadFileDescriptorSetFromBuffer(fs.readFileSync(descriptorsPath), {
    keepCase: true, // the proto's snake_case field names
    longs: String, // int64 shapes and parameters as strings, never rounded
    defaults: true,
    oneofs: true,
  });
  const { inference } = grpc.loadPackageDefinition(definition);
  return new inference.GRPCInferenceService(url, grpc.credentials.createInsecure());
}

// KServe v2 raw contents: little-endian; each BYTES element is a 4-byte length, then the bytes.
function bytesInput(name, element) {
  const length = Buffer.alloc(4);
  length.writeUInt32LE(element.length);
  return [{ name, datatype: 'BYTES', shape: [1, 1] }, Buffer.concat([length, element])];
}

function int64Input(name, value) {
  const raw = Buffer.alloc(8);
  raw.writeBigInt64LE(BigInt(value));
  return [{ name, datatype: 'INT64', shape: [1, 1] }, raw];
}

function int32Input(name, value) {
  const raw = Buffer.alloc(4);
  raw.writeInt32LE(value);
  return [{ name, datatype: 'INT32', shape: [1, 1] }, raw];
}

function decode(datatype, raw) {
  if (datatype === 'BYTES') {
    const elements = [];
    for (let offset = 0; offset < raw.length; ) {
      const length = raw.readUInt32LE(offset);
      elements.push(raw.subarray(offset + 4, offset + 4 + length));
      offset += 4 + length;
    }
    return elements;
  }
  const readers = {
    FP32: [4, (b, o) => b.readFloatLE(o)],
    INT32: [4, (b, o) => b.readInt32LE(o)],
    INT64: [8, (b, o) => b.readBigInt64LE(o).toString()],
    UINT8: [1, (b, o) => b.readUInt8(o)],
  };
  if (!readers[datatype]) throw new Error(`no decoder for datatype ${datatype}`);
  const [size, read] = readers[datatype];
  return Array.from({ length: raw.length / size }, (_, index) => read(raw, index * size));
}

// Output name -> decoded elements, from `raw_output_contents` (Triton's gRPC answer).
function outputsOf(response) {
  const outputs = {};
  response.outputs.forEach((output, index) => {
    outputs[output.name] = decode(output.datatype, response.raw_output_contents[index]);
  });
  return outputs;
}

function sha256(buffer) {
  return crypto.createHash('sha256').update(buffer).digest('hex');
}

function summary(outputs) {
  const text = (name) => (outputs[name] ? outputs[name][0].toString('utf8') : undefined);
  const png = outputs.png ? outputs.png[0] : Buffer.alloc(0);
  return {
    text: text('text'),
    emotion: text('emotion'),
    emotion_label: text('emotion_label'),
    emotion_probabilities: outputs.emotion_probabilities,
    prompt: text('prompt'),
    image_seed: outputs.image_seed ? outputs.image_seed[0] : undefined,
    event: text('event'),
    step: outputs.step ? outputs.step[0] : undefined,
    png_bytes: png.length,
    png_sha256: png.length ? sha256(png) : '',
  };
}

function request(model, args, audio, extraInputs, outputs) {
  const inputs = [
    bytesInput('audio_bytes', audio),
    int64Input('seed', args.seed),
    int32Input('num_inference_steps', args.steps),
    int32Input('max_new_tokens', args.maxNewTokens),
    ...extraInputs,
  ];
  return {
    model_name: model,
    inputs: inputs.map(([tensor]) => tensor),
    raw_input_contents: inputs.map(([, raw]) => raw),
    outputs: outputs.map((name) => ({ name })),
  };
}

function metadataOf(args) {
  const metadata = new grpc.Metadata();
  for (const [key, value] of args.headers) metadata.add(key, value);
  return metadata;
}

function infer(service, args, audio) {
  const body = request('speech_to_image', args, audio, [], PIPELINE_OUTPUTS);
  return new Promise((resolve, reject) => {
    service.ModelInfer(body, metadataOf(args), { deadline: Date.now() + 600_000 }, (error, response) =>
      error ? reject(error) : resolve(summary(outputsOf(response))),
    );
  });
}

function stream(service, args, audio) {
  const body = request('speech_to_image_stream', args, audio, [int32Input('preview_every', args.previewEvery)], []);
  // Ask Triton for an empty last message, so the end of the stream is explicit.
  // (protobufjs reads the descriptors' map fields as repeated key/value entries.)
  body.parameters = [{ key: 'triton_enable_empty_final_response', value: { bool_param: true } }];
  return new Promise((resolve, reject) => {
    const messages = [];
    const call = service.ModelStreamInfer(metadataOf(args), { deadline: Date.now() + 600_000 });
    call.on('data', (message) => {
      if (message.error_message) {
        call.end();
        reject(new Error(message.error_message));
        return;
      }
      const response = message.infer_response;
      if (response.outputs.length) messages.push(summary(outputsOf(response)));
      const final = response.parameters.find((entry) => entry.key === 'triton_final_response');
      if (final && final.value.bool_param) call.end();
    });
    call.on('error', reject);
    call.on('end', () => resolve(messages));
    call.write(body);
  });
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const service = loadService(args.descriptors, args.url);
  const audio = fs.readFileSync(args.audio);
  try {
    const pipeline = await infer(service, args, audio);
    const messages = await stream(service, args, audio);
    process.stdout.write(JSON.stringify({ pipeline, stream: messages }) + '\n');
  } finally {
    service.close();
  }
}

main().catch((error) => {
  process.stderr.write(`error: ${error.message}\n`);
  process.exit(1);
});
