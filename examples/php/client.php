<?php
// Calls the gateway's three RPCs as HTTP/JSON from PHP, with nothing but the curl
// and json extensions (Debian: php-cli php-curl), and reads its error details.
//
// Usage: php client.php [BASE_URL] [APP]   (defaults: http://localhost:50051 default)
//
// The HTTP/JSON mapping is declared in proto/wecom/kf/v1/upgrade.proto
// (google.api.http) and served on the gateway's gRPC port. Bodies use the proto3
// JSON mapping (openKfid, or open_kfid); an error answers with the HTTP status
// of its gRPC code and a google.rpc.Status as JSON:
// {"code": 9, "message": "...", "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", ...}]}

declare(strict_types=1);

const OPEN_KFID = 'kfxxxxxxxxxxxxxx';
const CUSTOMER = 'wmexample_php';
const TIMEOUT_SECONDS = 5;

// google.rpc.Code: the number in the error body, by name.
const CODE_NAMES = [
    'OK', 'CANCELLED', 'UNKNOWN', 'INVALID_ARGUMENT', 'DEADLINE_EXCEEDED', 'NOT_FOUND',
    'ALREADY_EXISTS', 'PERMISSION_DENIED', 'RESOURCE_EXHAUSTED', 'FAILED_PRECONDITION', 'ABORTED',
    'OUT_OF_RANGE', 'UNIMPLEMENTED', 'INTERNAL', 'UNAVAILABLE', 'DATA_LOSS', 'UNAUTHENTICATED',
];

/** A call the gateway refused: the HTTP status and the google.rpc.Status it sent. */
final class GatewayError extends RuntimeException
{
    public function __construct(public readonly int $httpStatus, public readonly array $status)
    {
        parent::__construct((string) ($status['message'] ?? "HTTP $httpStatus"));
    }

    /** One line: the status code, the ErrorInfo reason and errcode, any BadRequest fields. */
    public function describe(): string
    {
        $code = $this->status['code'] ?? 2;
        $line = 'error: code=' . (CODE_NAMES[$code] ?? (string) $code);
        foreach ($this->status['details'] ?? [] as $detail) {
            switch ($detail['@type'] ?? '') {
                case 'type.googleapis.com/google.rpc.ErrorInfo':
                    $line .= ' reason=' . $detail['reason'];
                    if (isset($detail['metadata']['errcode'])) {
                        $line .= ' errcode=' . $detail['metadata']['errcode'];
                    }
                    break;
                case 'type.googleapis.com/google.rpc.BadRequest':
                    $fields = array_map(fn (array $v): string => $v['field'], $detail['fieldViolations'] ?? []);
                    $line .= ' violations=' . implode(',', $fields);
                    break;
            }
        }
        return $line;
    }
}

final class UpgradeClient
{
    public function __construct(private string $baseUrl, private string $app)
    {
    }

    public function getUpgradeConfig(): array
    {
        return $this->call('GET', '/v1/upgrade-config', null);
    }

    public function upgradeService(array|object $request): array
    {
        return $this->call('POST', '/v1/upgrade-service', $request);
    }

    public function cancelUpgrade(array $request): array
    {
        return $this->call('POST', '/v1/cancel-upgrade-service', $request);
    }

    private function call(string $method, string $path, array|object|null $body): array
    {
        $headers = [
            'Accept: application/json',
            'x-wecom-app: ' . $this->app, // which configured WeCom app serves the call
        ];
        $curl = curl_init(rtrim($this->baseUrl, '/') . $path);
        curl_setopt_array($curl, [
            CURLOPT_CUSTOMREQUEST => $method,
            CURLOPT_RETURNTRANSFER => true,
            CURLOPT_CONNECTTIMEOUT => TIMEOUT_SECONDS,
            CURLOPT_TIMEOUT => TIMEOUT_SECONDS, // the whole call, like a gRPC deadline
        ]);
        if ($body !== null) {
            $headers[] = 'Content-Type: application/json';
            curl_setopt($curl, CURLOPT_POSTFIELDS, json_encode($body, JSON_UNESCAPED_UNICODE | JSON_THROW_ON_ERROR));
        }
        curl_setopt($curl, CURLOPT_HTTPHEADER, $headers);
        $raw = curl_exec($curl);
        if ($raw === false) {
            throw new RuntimeException("$method $path: " . curl_error($curl));
        }
        $httpStatus = curl_getinfo($curl, CURLINFO_RESPONSE_CODE);
        curl_close($curl);
        $doc = json_decode($raw, true);
        if (!is_array($doc)) {
            throw new RuntimeException("$method $path: HTTP $httpStatus, not JSON: " . substr($raw, 0, 200));
        }
        if ($httpStatus !== 200) {
            throw new GatewayError($httpStatus, $doc);
        }
        return $doc;
    }
}

function report(GatewayError $e): void
{
    echo $e->describe(), "\n";
    echo 'http status: ', $e->httpStatus, "\n";
}

function main(array $argv): int
{
    $client = new UpgradeClient($argv[1] ?? 'http://localhost:50051', $argv[2] ?? 'default');
    try {
        // proto3 JSON leaves out empty lists: hence the `?? []`.
        $config = $client->getUpgradeConfig();
        printf(
            "config: members=%s departments=%s chats=%s\n",
            implode(',', $config['memberRange']['useridList'] ?? []),
            implode(',', $config['memberRange']['departmentIdList'] ?? []),
            implode(',', $config['groupchatRange']['chatIdList'] ?? []),
        );
        $client->upgradeService([
            'openKfid' => OPEN_KFID,
            'externalUserid' => CUSTOMER,
            'member' => ['userid' => 'zhangsan', 'wording' => '你好，我是你的专属服务专员zhangsan'],
        ]);
        echo "upgrade member: ok\n";
        $client->upgradeService([
            'openKfid' => OPEN_KFID,
            'externalUserid' => CUSTOMER,
            'groupchat' => ['chatId' => 'wraaaaaaaaaaaaaaaa', 'wording' => '欢迎加入客户群'],
        ]);
        echo "upgrade groupchat: ok\n";
        $client->cancelUpgrade(['openKfid' => OPEN_KFID, 'externalUserid' => CUSTOMER]);
        echo "cancel: ok\n";
    } catch (GatewayError $e) {
        report($e);
        return 1;
    } catch (RuntimeException $e) {
        echo 'error: ', $e->getMessage(), "\n";
        return 1;
    }

    // Two calls that fail on purpose, to show the error details.
    $failing = [
        // wangwu is not configured in 升级服务: WeCom answers errcode 95021.
        ['openKfid' => OPEN_KFID, 'externalUserid' => CUSTOMER, 'member' => ['userid' => 'wangwu']],
        // Nothing set (an empty JSON object): refused by the gateway before any WeCom call.
        new stdClass(),
    ];
    foreach ($failing as $request) {
        try {
            $client->upgradeService($request);
            echo "error: none, but the call should have failed\n";
            return 1;
        } catch (GatewayError $e) {
            report($e);
        } catch (RuntimeException $e) {
            echo 'error: ', $e->getMessage(), "\n";
            return 1;
        }
    }
    return 0;
}

exit(main($argv));
