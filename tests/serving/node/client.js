// A client in another language: Node's @grpc/grpc-js with @grpc/proto-loader, using
// nothing of saiki but its .proto files. Usage: node client.js HOST:PORT PROTO_ROOT
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");
const path = require("path");

const [address, root] = process.argv.slice(2);
const definition = loader.loadSync(
  ["saiki/v1/prediction.proto", "saiki/v1/features.proto"].map((p) => path.join(root, p)),
  { includeDirs: [root], keepCase: true, longs: String, defaults: true },
);
const saiki = grpc.loadPackageDefinition(definition).saiki.v1;
const predictions = new saiki.PredictionService(address, grpc.credentials.createInsecure());
const features = new saiki.FeatureService(address, grpc.credentials.createInsecure());

predictions.Predict(
  { user_id: "u5", item_ids: ["i1", "i2", "i3", "i4"], device_id: "web", request_id: "node-1" },
  (error, ranked) => {
    if (error) { console.error(error.message); process.exit(2); }
    features.GetFeatures({ entity: "item", ids: ["i1", "i2"] }, (error2, found) => {
      if (error2) { console.error(error2.message); process.exit(3); }
      features.GetFeatures({ entity: "nope", ids: ["x"] }, (error3) => {
        console.log(JSON.stringify({
          predict: ranked,
          features: found.entities,
          bad: { code: error3 ? error3.code : null, details: error3 ? error3.details : null },
        }));
        process.exit(0);
      });
    });
  },
);
