//! The test S3 server (s3s-fs, started by `deploy/local/test.sh`) seen through an S3 client of the tests' own, not tenantry's reader and writer.

/// A `TENANTRY_TEST_S3_*` variable, or a panic that names the script that sets it.
pub fn s3_env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set: run the tests through deploy/local/test.sh"))
}

/// The `[storage]` section of a config that uses the test server, under `prefix`.
pub fn s3_storage_config(prefix: &str) -> String {
    format!(
        "[storage]\nkind = \"s3\"\nbucket = \"{}\"\nprefix = \"{prefix}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
        s3_env("TENANTRY_TEST_S3_BUCKET"),
        s3_env("TENANTRY_TEST_S3_ENDPOINT"),
        s3_env("TENANTRY_TEST_S3_ACCESS_KEY"),
        s3_env("TENANTRY_TEST_S3_SECRET_KEY"),
    )
}

pub async fn s3() -> aws_sdk_s3::Client {
    let creds = aws_sdk_s3::config::Credentials::new(
        s3_env("TENANTRY_TEST_S3_ACCESS_KEY"),
        s3_env("TENANTRY_TEST_S3_SECRET_KEY"),
        None,
        None,
        "test",
    );
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(s3_env("TENANTRY_TEST_S3_ENDPOINT"))
        .force_path_style(true)
        .credentials_provider(creds)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Every key under `prefix` (full keys, the test's prefix included), sorted.
pub async fn s3_keys(client: &aws_sdk_s3::Client, prefix: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut pages =
        client.list_objects_v2().bucket(s3_env("TENANTRY_TEST_S3_BUCKET")).prefix(prefix).into_paginator().send();
    while let Some(page) = pages.next().await {
        keys.extend(page.unwrap().contents().iter().filter_map(|o| o.key().map(str::to_string)));
    }
    keys.sort();
    keys
}

pub async fn s3_get(client: &aws_sdk_s3::Client, key: &str) -> Vec<u8> {
    let out = client.get_object().bucket(s3_env("TENANTRY_TEST_S3_BUCKET")).key(key).send().await.unwrap();
    out.body.collect().await.unwrap().into_bytes().to_vec()
}

pub async fn s3_put(client: &aws_sdk_s3::Client, key: &str, bytes: Vec<u8>) {
    client
        .put_object()
        .bucket(s3_env("TENANTRY_TEST_S3_BUCKET"))
        .key(key)
        .body(bytes.into())
        .send()
        .await
        .unwrap_or_else(|e| panic!("putting {key}: {e:?}"));
}

/// Deletes every object under `prefix`.
pub async fn s3_clear(client: &aws_sdk_s3::Client, prefix: &str) {
    for key in s3_keys(client, prefix).await {
        client.delete_object().bucket(s3_env("TENANTRY_TEST_S3_BUCKET")).key(key).send().await.unwrap();
    }
}
