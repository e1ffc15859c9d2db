//! Health, readiness and graceful shutdown.

use std::time::Duration;

use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::*;

async fn health_client(app: &TestApp) -> HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
}

async fn health_of(app: &TestApp, service: &str) -> ServingStatus {
    health_client(app)
        .await
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status()
}

async fn http_status(addr: std::net::SocketAddr, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    socket.read_to_string(&mut answer).await.unwrap();
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn health_reports_serving_for_the_server_and_the_service() {
    let app = spawn_app().await;
    assert_eq!(health_of(&app, "").await, ServingStatus::Serving);
    assert_eq!(
        health_of(&app, "wecom.kf.v1.CustomerUpgradeService").await,
        ServingStatus::Serving
    );
    assert_eq!(http_status(app.admin_addr, "/healthz").await, 200);
    assert_eq!(http_status(app.admin_addr, "/readyz").await, 200);
}

#[tokio::test]
async fn readiness_does_not_depend_on_wecom() {
    let (_reserved, closed) = refusing_addr();
    let app = spawn_app_with(|s| {
        s.apps.get_mut("default").unwrap().api_base = format!("http://{closed}").parse().unwrap();
    })
    .await;
    assert_eq!(http_status(app.admin_addr, "/readyz").await, 200);
    assert_eq!(health_of(&app, "").await, ServingStatus::Serving);
}

#[tokio::test]
async fn shutdown_reports_not_serving_while_draining_then_stops() {
    let mut app = spawn_app_with(|s| s.server.drain_delay = Duration::from_millis(2_000)).await;
    let mut health = health_client(&app).await;

    app.shut_down();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let during_drain = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(during_drain, ServingStatus::NotServing);
    assert_eq!(http_status(app.admin_addr, "/readyz").await, 503);
    drop(health);
    tokio::time::timeout(Duration::from_secs(5), &mut app.server)
        .await
        .expect("the server stops after the drain")
        .unwrap();
}

#[tokio::test]
async fn an_in_flight_call_finishes_during_shutdown() {
    let mut app = spawn_app().await;
    app.fault(
        wecom_kf_upgrade::wecom::Endpoint::CancelUpgrade,
        wecom_kf_upgrade::sandbox::Fault {
            delay_ms: 400,
            ..Default::default()
        },
    );
    let mut client = app.client.clone();
    let call = tokio::spawn(async move { client.cancel_upgrade(cancel()).await });
    // Shut down only once the call is in flight: WeCom has received it.
    while app.calls_to(wecom_kf_upgrade::wecom::Endpoint::CancelUpgrade) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    app.shut_down();

    call.await.unwrap().expect("the in-flight call completes");
    tokio::time::timeout(Duration::from_secs(5), &mut app.server)
        .await
        .expect("the server stops")
        .unwrap();
}
