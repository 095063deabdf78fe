// A client written as a Node developer would, with @grpc/grpc-js and @grpc/proto-loader:
// a purchase, the same purchase again (a replay), a stream of two, and a call that fails,
// whose google.rpc.Status details are decoded. Prints one JSON object of what it got.
// Run by tests/test_node_client.py; the environment names the server and the files.
"use strict";
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

const { ADDRESS, API_KEY, CARD, PROTO_DIR, GOOGLE_PROTO_DIR } = process.env;

// The options docs/api.md recommends: lowerCamelCase keys (proto-loader's default), int64
// as strings (not Long objects), enums by name, defaults filled in, the oneof field named.
const options = {
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_DIR, GOOGLE_PROTO_DIR],
};
const definition = protoLoader.loadSync(["loyalty/v1/transactions.proto"], options);
const loyalty = grpc.loadPackageDefinition(definition).loyalty.v1;
const client = new loyalty.TransactionService(ADDRESS, grpc.credentials.createInsecure());
const metadata = new grpc.Metadata();
metadata.set("x-api-key", API_KEY);

function transaction(requestId, account) {
  return {
    context: { requestId, account, localTime: "2026-03-02T10:00:00", location: "S001" },
    purchase: {
      currency: "USD",
      lines: [{ number: 1, item: "JACKET-1", amount: "12000", quantity: 1, hierarchy: ["OUTERWEAR"] }],
    },
  };
}

function post(request) {
  return new Promise((resolve, reject) => {
    client.postTransaction(request, metadata, { deadline: Date.now() + 10000 }, (error, answer) =>
      error ? reject(error) : resolve(answer),
    );
  });
}

function stream(requests) {
  return new Promise((resolve, reject) => {
    const call = client.streamTransactions(metadata, { deadline: Date.now() + 10000 });
    const results = [];
    call.on("data", (response) => results.push(response.result));
    call.on("error", reject);
    call.on("end", () => resolve(results));
    for (const request of requests) call.write(request);
    call.end();
  });
}

// The rich error model: grpc-status-details-bin holds a google.rpc.Status whose details
// are Any messages; ErrorInfo and friends decode from google/rpc/error_details.proto.
function details(error) {
  const root = protobuf.loadSync([
    `${GOOGLE_PROTO_DIR}/google/rpc/status.proto`,
    `${GOOGLE_PROTO_DIR}/google/rpc/error_details.proto`,
  ]);
  const [bytes] = error.metadata.get("grpc-status-details-bin");
  const status = root.lookupType("google.rpc.Status").decode(bytes);
  return status.details.map((any) => {
    const type = root.lookupType(any.type_url.split("/").pop());
    return { type: type.fullName.slice(1), ...type.toObject(type.decode(any.value)) };
  });
}

async function main() {
  const first = await post({ transaction: transaction("node-1", CARD) });
  const again = await post({ transaction: transaction("node-1", CARD) });
  const streamed = await stream([
    { transaction: transaction("node-2", CARD) },
    { transaction: transaction("node-3", CARD) },
  ]);
  let failure = null;
  try {
    await post({ transaction: transaction("node-4", "6001299999999999") });
  } catch (error) {
    failure = { code: error.code, details: details(error) };
  }
  const brief = (result) => ({
    requestId: result.requestId,
    status: result.status,
    replayed: result.replayed,
    points: result.balances["points:points"],
  });
  console.log(
    JSON.stringify({
      first: brief(first.result),
      again: brief(again.result),
      streamed: streamed.map(brief),
      failure,
    }),
  );
  client.close();
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
