// keyfleetd against the official Connect client for Node (@connectrpc/connect-node), with no
// generated code: the services come from a FileDescriptorSet that protoc-c writes from proto/.
// Run by tests/integration/connect_conformance.sh, which starts keyfleetd (Vault stand-in KMS)
// and passes: DESCRIPTORS URL DIR (certificates: DIR/{operator,conf-1}.{crt,key}, DIR/ca.crt).
// Prints "ok - ..." / "not ok - ..." lines and "volume ID" lines the shell test checks against
// the audit log; exits 1 when a check failed.
import { readFileSync, writeFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { compressionGzip, createConnectTransport } from "@connectrpc/connect-node";

const [descFile, baseUrl, dir, faultFile] = process.argv.slice(2);
const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, readFileSync(descFile)));
const admin = registry.getService("keyfleet.v1.AdminService");
const node = registry.getService("keyfleet.v1.NodeService");
let failed = 0;
const ok = (d) => console.log(`ok - ${d}`);
const notOk = (d, why) => { failed++; console.log(`not ok - ${d}\n#   ${why}`); };

function transport(who, extra = {}) {
  return createConnectTransport({
    baseUrl, httpVersion: "2", useBinaryFormat: true,
    nodeOptions: { ca: readFileSync(`${dir}/ca.crt`), cert: readFileSync(`${dir}/${who}.crt`), key: readFileSync(`${dir}/${who}.key`) },
    ...extra,
  });
}
const operator = createClient(admin, transport("operator"));
const nodeClient = createClient(node, transport("conf-1"));
const nodeAsAdmin = createClient(admin, transport("conf-1"));

// expectCode: the call fails with this Connect code (and a message matching re, if given).
async function expectCode(desc, code, call, re) {
  try {
    await call();
    notOk(desc, `succeeded; wanted ${Code[code]}`);
  } catch (e) {
    const ce = ConnectError.from(e);
    if (ce.code !== code) notOk(desc, `got ${Code[ce.code]}: ${ce.rawMessage}; wanted ${Code[code]}`);
    else if (re && !re.test(ce.rawMessage)) notOk(desc, `message "${ce.rawMessage}" does not match ${re}`);
    else ok(`${desc} (${Code[code]}: ${ce.rawMessage})`);
  }
}
const enrollReq = (id) => ({
  volume: { id, kind: 1, name: `/dev/disk/${id}` },
  ephemeralPublicKey: randomBytes(32),
  requestId: `conf-${randomBytes(12).toString("hex")}`,
});
const fault = (line) => writeFileSync(faultFile, line + "\n");

// One success.
try {
  const st = await operator.clusterStatus({});
  if (st.members.length >= 1) ok(`ClusterStatus as an operator succeeds (${st.members.length} member)`);
  else notOk("ClusterStatus as an operator succeeds", "no members in the answer");
} catch (e) {
  notOk("ClusterStatus as an operator succeeds", String(e));
}

// Each error class the client can meet.
await expectCode("a node calling AdminService", Code.PermissionDenied, () => nodeAsAdmin.clusterStatus({}));
await expectCode("Login with an unknown role and secret", Code.Unauthenticated,
  () => nodeClient.login({ roleId: "00000000-0000-4000-8000-000000000000", secretId: "kfs." + "A".repeat(43) }));
await expectCode("Login without credentials", Code.InvalidArgument, () => nodeClient.login({}), /role_id/);
await expectCode("PutPolicy with YAML that does not parse", Code.InvalidArgument,
  () => operator.putPolicy({ yaml: "rules: [\n" }), /policy/);
await expectCode("Approve of a request that does not exist", Code.NotFound,
  () => operator.approve({ requestId: "0123456789abcdef0123456789abcdef" }));
await expectCode("Release of a volume that was never enrolled", Code.NotFound,
  () => nodeClient.release({ volume: { id: "never-enrolled", kind: 1 }, wrappedKey: "kf:x", ephemeralPublicKey: randomBytes(32) }));

// Compression: gzip is refused as the spec says (unimplemented), not as a bad body.
const gzipOperator = createClient(admin, transport("operator", { sendCompression: compressionGzip, compressMinBytes: 0 }));
await expectCode("a gzip-compressed request", Code.Unimplemented,
  () => gzipOperator.approve({ requestId: "0123456789abcdef0123456789abcdef" }), /compression is not supported/);

// Deadlines. The KMS answers after 1.5 s; nothing may be enrolled for a client whose time is up.
fault("slow 1500");
const v1 = `conf-deadline-client-${randomBytes(4).toString("hex")}`;
await expectCode("Enroll with timeoutMs 400 while the KMS takes 1.5 s", Code.DeadlineExceeded,
  () => nodeClient.enroll(enrollReq(v1), { timeoutMs: 400 }));
console.log(`volume ${v1}`);
const v2 = `conf-deadline-server-${randomBytes(4).toString("hex")}`;
// The header alone (the client itself waits): keyfleetd answers deadline_exceeded itself.
await expectCode("Enroll whose connect-timeout-ms (300) passes during the KMS call: keyfleetd answers",
  Code.DeadlineExceeded, () => nodeClient.enroll(enrollReq(v2), { headers: { "connect-timeout-ms": "300" } }),
  /no key was released/);
console.log(`volume ${v2}`);
await new Promise((r) => setTimeout(r, 1500)); // the first call's KMS answer arrives meanwhile
fault("");
await expectCode("a malformed connect-timeout-ms", Code.InvalidArgument,
  () => operator.clusterStatus({}, { headers: { "connect-timeout-ms": "abc" } }), /connect-timeout-ms/);
let wrapped = "";
try {
  const r = await nodeClient.enroll(enrollReq(v2), { timeoutMs: 30000 });
  wrapped = r.wrappedKey;
  if (r.wrappedKey.startsWith("kf:")) ok("the same volume then enrolls with a deadline it meets: nothing was stored before");
  else notOk("the same volume then enrolls", `wrapped key ${r.wrappedKey}`);
} catch (e) {
  notOk("the same volume then enrolls with a deadline it meets", String(e));
}
// A Release whose deadline passes during the KMS unwrap: the key is dropped, and the audit log
// says so (the shell test reads the record).
fault("slow 1500");
await expectCode("Release whose connect-timeout-ms (300) passes during the KMS unwrap: keyfleetd answers",
  Code.DeadlineExceeded, () => nodeClient.release({ volume: { id: v2, kind: 1 }, wrappedKey: wrapped,
    ephemeralPublicKey: randomBytes(32), requestId: `conf-${randomBytes(12).toString("hex")}` },
  { headers: { "connect-timeout-ms": "300" } }), /no key was released/);
// The client gives up first (timeoutMs: it resets the stream): the key the KMS unwraps for nobody
// is audited all the same.
await expectCode("Release with timeoutMs 400 while the KMS takes 1.5 s", Code.DeadlineExceeded,
  () => nodeClient.release({ volume: { id: v2, kind: 1 }, wrappedKey: wrapped,
    ephemeralPublicKey: randomBytes(32), requestId: `conf-${randomBytes(12).toString("hex")}` }, { timeoutMs: 400 }));
await new Promise((r) => setTimeout(r, 1600)); // the KMS answer arrives meanwhile
fault("");
process.exit(failed ? 1 : 0);
