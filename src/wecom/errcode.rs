//! WeCom errcodes the gateway treats specially (WeCom's 全局错误码). Every other
//! errcode is passed through to callers unchanged.

/// 系统繁忙: retry, at most 3 times (WeCom's advice).
pub(crate) const SYSTEM_BUSY: i64 = -1;
/// 不合法的secret参数 from `gettoken`; an invalid access_token on other calls.
pub(crate) const INVALID_CREDENTIAL: i64 = 40001;
/// 不合法的UserID.
pub(crate) const INVALID_USERID: i64 = 40003;
/// 不合法的CorpID.
pub(crate) const INVALID_CORPID: i64 = 40013;
/// 不合法的access_token.
pub(crate) const INVALID_ACCESS_TOKEN: i64 = 40014;
/// 不合法的参数.
pub(crate) const INVALID_PARAMETER: i64 = 40058;
/// 不合法的外部联系人userid.
pub(crate) const INVALID_EXTERNAL_USERID: i64 = 40096;
/// 缺少access_token参数: the gateway sent no token, which is its own fault.
pub(crate) const MISSING_ACCESS_TOKEN: i64 = 41001;
/// access_token已过期.
pub(crate) const ACCESS_TOKEN_EXPIRED: i64 = 42001;
/// 接口调用超过限制 (per-minute or daily frequency limit).
pub(crate) const RATE_LIMITED: i64 = 45009;
/// 接口并发调用超过限制.
pub(crate) const CONCURRENCY_LIMITED: i64 = 45033;
/// 不合法的数据格式: the gateway sent JSON WeCom could not read.
pub(crate) const INVALID_JSON: i64 = 47001;
/// API接口无权限调用.
pub(crate) const API_NOT_PERMITTED: i64 = 48002;
/// 指定的成员/部门/标签参数无权限 (outside the app's visible range).
pub(crate) const OUT_OF_VISIBLE_RANGE: i64 = 60011;
/// 不安全的访问IP: the gateway's egress IP is not in the app's trusted IPs.
pub(crate) const UNTRUSTED_IP: i64 = 60020;
/// 无权限操作指定的应用.
pub(crate) const APP_NOT_PERMITTED: i64 = 301002;
/// 不合法的suite_secret (`get_suite_token`).
pub(crate) const INVALID_SUITE_SECRET: i64 = 40080;
/// 不合法的suite_access_token (`get_corp_token`).
pub(crate) const INVALID_SUITE_TOKEN: i64 = 40082;
/// 不合法的suite_id (`get_suite_token`).
pub(crate) const INVALID_SUITE_ID: i64 = 40083;
/// 不合法的永久授权码 (`get_corp_token`): the corp cancelled the authorisation, or
/// its permanent code was reset.
pub(crate) const INVALID_PERMANENT_CODE: i64 = 40084;
/// 不合法的suite_ticket: stale (older than 30 minutes) or not WeCom's newest.
pub(crate) const INVALID_SUITE_TICKET: i64 = 40085;
/// suite_access_token已过期.
pub(crate) const SUITE_TOKEN_EXPIRED: i64 = 42009;
/// 不合法的open_kfid.
pub(crate) const INVALID_OPEN_KFID: i64 = 95000;
/// open_kfid不存在.
pub(crate) const OPEN_KFID_NOT_FOUND: i64 = 95004;
/// The userid or chat_id is not configured in 「微信客服」-「升级服务」 (the seed's 95021).
pub(crate) const NOT_CONFIGURED_FOR_UPGRADE: i64 = 95021;
/// First and last of the 微信客服 (kf) errcodes.
pub(crate) const KF_RANGE: std::ops::RangeInclusive<i64> = 95000..=95099;

/// The access token used by a business call was refused: refresh and retry once.
pub(crate) fn is_token_error(errcode: i64) -> bool {
    matches!(
        errcode,
        INVALID_CREDENTIAL | INVALID_ACCESS_TOKEN | ACCESS_TOKEN_EXPIRED
    )
}

/// `gettoken` refused the corp id or the secret.
pub(crate) fn is_credential_error(errcode: i64) -> bool {
    matches!(errcode, INVALID_CREDENTIAL | INVALID_CORPID)
}

/// `get_corp_token` refused the suite's token: refresh it and retry once.
pub(crate) fn is_suite_token_error(errcode: i64) -> bool {
    matches!(errcode, INVALID_SUITE_TOKEN | SUITE_TOKEN_EXPIRED)
}

/// `get_suite_token` refused the suite id or secret.
pub(crate) fn is_suite_credential_error(errcode: i64) -> bool {
    matches!(errcode, INVALID_SUITE_SECRET | INVALID_SUITE_ID)
}

/// Whether the gateway knows `errcode` (a constant above, or a 微信客服 errcode):
/// the errcodes metrics name one by one; any other is counted as `other`.
pub(crate) fn is_known(errcode: i64) -> bool {
    KF_RANGE.contains(&errcode)
        || matches!(
            errcode,
            0 | SYSTEM_BUSY
                | INVALID_CREDENTIAL
                | INVALID_USERID
                | INVALID_CORPID
                | INVALID_ACCESS_TOKEN
                | INVALID_PARAMETER
                | INVALID_EXTERNAL_USERID
                | MISSING_ACCESS_TOKEN
                | ACCESS_TOKEN_EXPIRED
                | RATE_LIMITED
                | CONCURRENCY_LIMITED
                | INVALID_JSON
                | API_NOT_PERMITTED
                | OUT_OF_VISIBLE_RANGE
                | UNTRUSTED_IP
                | APP_NOT_PERMITTED
                | INVALID_SUITE_SECRET
                | INVALID_SUITE_TOKEN
                | INVALID_SUITE_ID
                | INVALID_PERMANENT_CODE
                | INVALID_SUITE_TICKET
                | SUITE_TOKEN_EXPIRED
        )
}
