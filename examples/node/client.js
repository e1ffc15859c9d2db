// Calls the gateway's three RPCs from Node.js and reads its error details.
//
// Usage: node client.js [HOST:PORT] [APP]   (defaults: localhost:50051 default)
// The protos are loaded at run time from ../../proto: the gateway's own, and the
// google.rpc ones (status.proto, error_details.proto) that decode the
// `grpc-status-details-bin` trailer into google.rpc.Status, ErrorInfo and BadRequest.
'use strict';

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const PROTO_DIR = path.resolve(__dirname, '..', '..', 'proto');
const OPEN_KFID = 'kfxxxxxxxxxxxxxx';
const CUSTOMER = 'wmexample_node';
const DEADLINE_MS = 5000;

// The service, with proto field names (open_kfid, …) kept as they are.
const definition = protoLoader.loadSync('wecom/kf/v1/upgrade.proto', {
  includeDirs: [PROTO_DIR],
  keepCase: true,
  longs: String,
  defaults: true,
  oneofs: true,
});
const { CustomerUpgradeService } = grpc.loadPackageDefinition(definition).wecom.kf.v1;

// google.rpc.Status and its details. protobufjs bundles google/protobuf/any.proto
// and duration.proto, which these import.
const rpcRoot = new protobuf.Root();
rpcRoot.resolvePath = (origin, target) => path.join(PROTO_DIR, target);
rpcRoot.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto'], { keepCase: true });
const Status = rpcRoot.lookupType('google.rpc.Status');
const DETAIL_TYPES = {
  'type.googleapis.com/google.rpc.ErrorInfo': rpcRoot.lookupType('google.rpc.ErrorInfo'),
  'type.googleapis.com/google.rpc.BadRequest': rpcRoot.lookupType('google.rpc.BadRequest'),
};

const codeName = (code) => Object.keys(grpc.status).find((name) => grpc.status[name] === code);

// One line: the status code, the ErrorInfo reason and errcode, any BadRequest fields.
function describeError(err) {
  let line = `error: code=${codeName(err.code)}`;
  const [raw] = err.metadata ? err.metadata.get('grpc-status-details-bin') : [];
  if (!raw) return line;
  for (const any of Status.decode(raw).details) {
    const type = DETAIL_TYPES[any.type_url];
    if (!type) continue;
    const detail = type.decode(any.value);
    if (any.type_url.endsWith('.ErrorInfo')) {
      line += ` reason=${detail.reason}`;
      if (detail.metadata.errcode !== undefined) line += ` errcode=${detail.metadata.errcode}`;
    } else {
      line += ` violations=${detail.field_violations.map((v) => v.field).join(',')}`;
    }
  }
  return line;
}

async function main() {
  const addr = process.argv[2] || 'localhost:50051';
  const app = process.argv[3] || 'default';
  const client = new CustomerUpgradeService(addr, grpc.credentials.createInsecure());
  const metadata = new grpc.Metadata();
  metadata.set('x-wecom-app', app); // which configured WeCom app serves the call

  const call = (method, request) =>
    new Promise((resolve, reject) => {
      const deadline = new Date(Date.now() + DEADLINE_MS);
      client[method](request, metadata, { deadline }, (err, response) =>
        err ? reject(err) : resolve(response),
      );
    });

  try {
    try {
      const config = await call('GetUpgradeConfig', {});
      const members = config.member_range;
      console.log(
        `config: members=${members.userid_list.join(',')}` +
          ` departments=${members.department_id_list.join(',')}` +
          ` chats=${config.groupchat_range.chat_id_list.join(',')}`,
      );
      await call('UpgradeService', {
        open_kfid: OPEN_KFID,
        external_userid: CUSTOMER,
        member: { userid: 'zhangsan', wording: '你好，我是你的专属服务专员zhangsan' },
      });
      console.log('upgrade member: ok');
      await call('UpgradeService', {
        open_kfid: OPEN_KFID,
        external_userid: CUSTOMER,
        groupchat: { chat_id: 'wraaaaaaaaaaaaaaaa', wording: '欢迎加入客户群' },
      });
      console.log('upgrade groupchat: ok');
      await call('CancelUpgrade', { open_kfid: OPEN_KFID, external_userid: CUSTOMER });
      console.log('cancel: ok');
    } catch (err) {
      console.log(describeError(err));
      return 1;
    }

    // Two calls that fail on purpose, to show the error details.
    const failing = [
      // wangwu is not configured in 升级服务: WeCom answers errcode 95021.
      { open_kfid: OPEN_KFID, external_userid: CUSTOMER, member: { userid: 'wangwu' } },
      // Nothing set: refused by the gateway before any WeCom call.
      {},
    ];
    for (const request of failing) {
      try {
        await call('UpgradeService', request);
        console.log('error: none, but the call should have failed');
        return 1;
      } catch (err) {
        console.log(describeError(err));
      }
    }
    return 0;
  } finally {
    client.close();
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (error) => {
    console.error(error);
    process.exitCode = 1;
  },
);
