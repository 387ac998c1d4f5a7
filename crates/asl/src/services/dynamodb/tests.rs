use super::*;

fn tables() -> Arc<MemoryTables> {
    let t = Arc::new(MemoryTables::new());
    t.create_table("T", "pk", None);
    t.create_table("Both", "pk", Some("sk"));
    t
}

async fn call(t: &Arc<MemoryTables>, action: &str, params: Value) -> Result<Value, TaskError> {
    DynamoDb { tables: t.clone() }
        .call(&format!("arn:aws:states:::dynamodb:{action}"), params)
        .await
}

async fn put(t: &Arc<MemoryTables>, item: Value) {
    call(t, "putItem", json!({"TableName": "T", "Item": item}))
        .await
        .unwrap();
}

async fn get(t: &Arc<MemoryTables>, pk: &str) -> Value {
    let out = call(
        t,
        "getItem",
        json!({"TableName": "T", "Key": {"pk": {"S": pk}}}),
    )
    .await
    .unwrap();
    out.get("Item").cloned().unwrap_or(Value::Null)
}

#[tokio::test]
async fn put_then_get_round_trips_with_sdk_metadata() {
    let t = tables();
    let item = json!({"pk": {"S": "a"}, "n": {"N": "1"}, "m": {"M": {"x": {"L": [{"BOOL": true}, {"NULL": true}]}}}, "ss": {"SS": ["p", "q"]}});
    let out = call(&t, "putItem", json!({"TableName": "T", "Item": item}))
        .await
        .unwrap();
    assert_eq!(out["SdkHttpMetadata"]["HttpStatusCode"], 200);
    assert!(out.get("Attributes").is_none());
    assert_eq!(get(&t, "a").await, item);
    let missing = call(
        &t,
        "getItem",
        json!({"TableName": "T", "Key": {"pk": {"S": "zz"}}}),
    )
    .await
    .unwrap();
    assert!(missing.get("Item").is_none());
    let projected = call(
        &t,
        "getItem",
        json!({"TableName": "T", "Key": {"pk": {"S": "a"}}, "ProjectionExpression": "#n, ss", "ExpressionAttributeNames": {"#n": "n"}}),
    )
    .await
    .unwrap();
    assert_eq!(
        projected["Item"],
        json!({"n": {"N": "1"}, "ss": {"SS": ["p", "q"]}})
    );
}

#[tokio::test]
async fn conditional_put_fails_like_aws() {
    let t = tables();
    let params = json!({"TableName": "T", "Item": {"pk": {"S": "a"}}, "ConditionExpression": "attribute_not_exists(pk)"});
    call(&t, "putItem", params.clone()).await.unwrap();
    let err = call(&t, "putItem", params).await.unwrap_err();
    assert_eq!(err.error, "DynamoDB.ConditionalCheckFailedException");
    assert!(err.cause.starts_with("The conditional request failed (Service: AmazonDynamoDBv2; Status Code: 400; Error Code: ConditionalCheckFailedException; Request ID: "));
    // ALL_OLD gives the replaced item.
    let out = call(
        &t,
        "putItem",
        json!({"TableName": "T", "Item": {"pk": {"S": "a"}, "v": {"N": "2"}}, "ReturnValues": "ALL_OLD"}),
    )
    .await
    .unwrap();
    assert_eq!(out["Attributes"], json!({"pk": {"S": "a"}}));
}

#[tokio::test]
async fn update_set_remove_add_delete() {
    let t = tables();
    put(&t, json!({"pk": {"S": "a"}, "count": {"N": "5"}, "tags": {"SS": ["x", "y"]}, "gone": {"SS": ["x"]}, "few": {"NS": ["1", "2"]}, "old": {"S": "o"}, "doc": {"M": {"l": {"L": [{"N": "1"}]}}}})).await;
    let out = call(
        &t,
        "updateItem",
        json!({
            "TableName": "T",
            "Key": {"pk": {"S": "a"}},
            "UpdateExpression": "SET #c = #c + :one, doc.l = list_append(doc.l, :more), fresh = if_not_exists(fresh, :zero) REMOVE old ADD tags :z, total :one DELETE gone :x, few :n1",
            "ConditionExpression": "#c BETWEEN :one AND :ten AND contains(tags, :xs) AND size(old) = :one",
            "ExpressionAttributeNames": {"#c": "count"},
            "ExpressionAttributeValues": {":one": {"N": "1"}, ":ten": {"N": "10"}, ":more": {"L": [{"N": "2"}]}, ":zero": {"N": "0"}, ":z": {"SS": ["z"]}, ":x": {"SS": ["x"]}, ":xs": {"S": "x"}, ":n1": {"NS": ["1.0"]}},
            "ReturnValues": "UPDATED_NEW"
        }),
    )
    .await
    .unwrap();
    let want = json!({"pk": {"S": "a"}, "count": {"N": "6"}, "tags": {"SS": ["x", "y", "z"]}, "few": {"NS": ["2"]}, "doc": {"M": {"l": {"L": [{"N": "1"}, {"N": "2"}]}}}, "fresh": {"N": "0"}, "total": {"N": "1"}});
    assert_eq!(get(&t, "a").await, want);
    assert_eq!(out["Attributes"]["count"], json!({"N": "6"}));
    assert!(out["Attributes"].get("pk").is_none());
}

#[tokio::test]
async fn update_of_a_missing_item_creates_it_unless_the_condition_fails() {
    let t = tables();
    let out = call(
        &t,
        "updateItem",
        json!({"TableName": "T", "Key": {"pk": {"S": "n"}}, "UpdateExpression": "SET v = :v", "ExpressionAttributeValues": {":v": {"S": "x"}}, "ReturnValues": "ALL_NEW"}),
    )
    .await
    .unwrap();
    assert_eq!(
        out["Attributes"],
        json!({"pk": {"S": "n"}, "v": {"S": "x"}})
    );
    let err = call(
        &t,
        "updateItem",
        json!({"TableName": "T", "Key": {"pk": {"S": "m"}}, "UpdateExpression": "SET v = :v", "ConditionExpression": "attribute_exists(pk)", "ExpressionAttributeValues": {":v": {"S": "x"}}}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.error, "DynamoDB.ConditionalCheckFailedException");
    assert_eq!(get(&t, "m").await, Value::Null);
}

#[tokio::test]
async fn delete_with_condition_and_all_old() {
    let t = tables();
    put(&t, json!({"pk": {"S": "a"}, "v": {"N": "3"}})).await;
    let params = |limit: &str| json!({"TableName": "T", "Key": {"pk": {"S": "a"}}, "ConditionExpression": "v < :l OR NOT attribute_exists(v)", "ExpressionAttributeValues": {":l": {"N": limit}}, "ReturnValues": "ALL_OLD"});
    let err = call(&t, "deleteItem", params("3")).await.unwrap_err();
    assert_eq!(err.error, "DynamoDB.ConditionalCheckFailedException");
    let out = call(&t, "deleteItem", params("3.5")).await.unwrap();
    assert_eq!(out["Attributes"]["v"], json!({"N": "3"}));
    assert_eq!(get(&t, "a").await, Value::Null);
}

#[tokio::test]
async fn comparisons_follow_dynamodb_types() {
    let t = tables();
    put(
        &t,
        json!({"pk": {"S": "a"}, "n": {"N": "10"}, "s": {"S": "abc"}, "l": {"L": [{"S": "q"}]}}),
    )
    .await;
    let ok = |cond: &str, values: Value| {
        let t = t.clone();
        let cond = cond.to_owned();
        async move {
            call(&t, "updateItem", json!({"TableName": "T", "Key": {"pk": {"S": "a"}}, "ConditionExpression": cond, "ExpressionAttributeValues": values}))
                .await
                .is_ok()
        }
    };
    assert!(ok("n = :v", json!({":v": {"N": "10.0"}})).await);
    assert!(ok("n > :v", json!({":v": {"N": "9"}})).await);
    // A number and a string never compare.
    assert!(!ok("n > :v", json!({":v": {"S": "1"}})).await);
    assert!(ok("n <> :v", json!({":v": {"S": "10"}})).await);
    assert!(ok("begins_with(s, :v)", json!({":v": {"S": "ab"}})).await);
    assert!(
        ok(
            "s IN (:a, :b)",
            json!({":a": {"S": "x"}, ":b": {"S": "abc"}})
        )
        .await
    );
    assert!(ok("contains(l, :v)", json!({":v": {"S": "q"}})).await);
    assert!(ok("attribute_type(n, :t)", json!({":t": {"S": "N"}})).await);
    assert!(!ok("missing = :v", json!({":v": {"S": "x"}})).await);
    assert!(ok("(missing = :v) OR s >= :v", json!({":v": {"S": "abc"}})).await);
}

#[tokio::test]
async fn errors_name_the_problem_like_aws() {
    let t = tables();
    put(&t, json!({"pk": {"S": "a"}, "s": {"S": "x"}})).await;
    let err_of = |action: &'static str, params: Value| {
        let t = t.clone();
        async move { call(&t, action, params).await.unwrap_err() }
    };
    let e = err_of(
        "getItem",
        json!({"TableName": "Nope", "Key": {"pk": {"S": "a"}}}),
    )
    .await;
    assert_eq!(e.error, "DynamoDB.ResourceNotFoundException");
    assert!(e.cause.starts_with("Requested resource not found"));
    let e = err_of(
        "getItem",
        json!({"TableName": "T", "Key": {"id": {"S": "a"}}}),
    )
    .await;
    assert_eq!(e.error, "DynamoDB.AmazonDynamoDBException");
    assert!(
        e.cause
            .starts_with("The provided key element does not match the schema")
    );
    assert!(e.cause.contains("Error Code: ValidationException"));
    let e = err_of(
        "getItem",
        json!({"TableName": "Both", "Key": {"pk": {"S": "a"}}}),
    )
    .await;
    assert!(
        e.cause
            .starts_with("The provided key element does not match the schema")
    );
    let e = err_of(
        "putItem",
        json!({"TableName": "T", "Item": {"s": {"S": "x"}}}),
    )
    .await;
    assert!(e.cause.contains("Missing the key pk in the item"));
    let e = err_of(
        "putItem",
        json!({"TableName": "T", "Item": {"pk": {"S": "a"}, "n": {"N": "ten"}}}),
    )
    .await;
    assert!(
        e.cause
            .starts_with("A value provided cannot be converted into a number")
    );
    let e = err_of("putItem", json!({"TableName": "T", "Item": {"pk": "a"}})).await;
    assert!(e.cause.contains("Supplied AttributeValue"));
    let e = err_of(
        "putItem",
        json!({"TableName": "T", "Item": {"pk": {"S": "a", "N": "1"}}}),
    )
    .await;
    assert!(e.cause.contains("more than one datatypes"));
    let e = err_of("putItem", json!({"Item": {"pk": {"S": "a"}}})).await;
    assert!(e.cause.contains("Value null at 'tableName'"));
    let e = err_of("updateItem", json!({"TableName": "T", "Key": {"pk": {"S": "a"}}, "UpdateExpression": "SET = :v", "ExpressionAttributeValues": {":v": {"S": "x"}}})).await;
    assert!(
        e.cause
            .starts_with("Invalid UpdateExpression: Syntax error; token: \"=\""),
        "{}",
        e.cause
    );
    let e = err_of(
        "updateItem",
        json!({"TableName": "T", "Key": {"pk": {"S": "a"}}, "UpdateExpression": "SET s = :v"}),
    )
    .await;
    assert!(e.cause.contains("attribute value: :v"));
    let e = err_of("updateItem", json!({"TableName": "T", "Key": {"pk": {"S": "a"}}, "UpdateExpression": "SET #s = :v", "ExpressionAttributeValues": {":v": {"S": "x"}}})).await;
    assert!(e.cause.contains("attribute name: #s"));
    let e = err_of("updateItem", json!({"TableName": "T", "Key": {"pk": {"S": "a"}}, "UpdateExpression": "SET s = :v", "ExpressionAttributeValues": {":v": {"S": "x"}, ":w": {"S": "y"}}})).await;
    assert!(e.cause.contains("unused in expressions: keys: {:w}"));
    let e = err_of("updateItem", json!({"TableName": "T", "Key": {"pk": {"S": "a"}}, "UpdateExpression": "SET pk = :v", "ExpressionAttributeValues": {":v": {"S": "x"}}})).await;
    assert!(e.cause.contains("Cannot update attribute pk"));
    let e = err_of("updateItem", json!({"TableName": "T", "Key": {"pk": {"S": "a"}}, "UpdateExpression": "SET s = s + :v", "ExpressionAttributeValues": {":v": {"N": "1"}}})).await;
    assert!(e.cause.contains("incorrect data type"));
    let e = err_of("updateItem", json!({"TableName": "T", "Key": {"pk": {"S": "a"}}, "UpdateExpression": "ADD s :v", "ExpressionAttributeValues": {":v": {"N": "1"}}})).await;
    assert!(e.cause.contains("incorrect data type; operator: ADD"));
    let e = err_of("updateItem", json!({"TableName": "T", "Key": {"pk": {"S": "a"}}, "UpdateExpression": "SET a.b = :v", "ExpressionAttributeValues": {":v": {"N": "1"}}})).await;
    assert!(
        e.cause
            .contains("document path provided in the update expression is invalid")
    );
    let e = err_of("updateItem", json!({"TableName": "T", "Key": {"pk": {"S": "a"}}, "UpdateExpression": "SET s = :v SET t = :v", "ExpressionAttributeValues": {":v": {"N": "1"}}})).await;
    assert!(e.cause.contains("can only be used once"));
    let e = err_of("deleteItem", json!({"TableName": "T", "Key": {"pk": {"S": "a"}}, "ConditionExpression": "s = = :v", "ExpressionAttributeValues": {":v": {"N": "1"}}})).await;
    assert!(
        e.cause
            .starts_with("Invalid ConditionExpression: Syntax error")
    );
    let e = err_of(
        "deleteItem",
        json!({"TableName": "T", "Key": {"pk": {"S": "a"}}, "ConditionExpression": "frob(s)"}),
    )
    .await;
    assert!(e.cause.contains("Invalid function name; function: frob"));
    let e = err_of(
        "deleteItem",
        json!({"TableName": "T", "Key": {"pk": {"S": "a"}}, "ReturnValues": "ALL_NEW"}),
    )
    .await;
    assert!(e.cause.contains("'returnValues'"));
    let e = err_of("getItem", json!({"TableName": "T", "Key": {"pk": {"S": "a"}}, "ConditionExpression": "attribute_exists(pk)"})).await;
    assert!(
        e.cause
            .contains("'ConditionExpression' is not a parameter of DynamoDB GetItem"),
        "{}",
        e.cause
    );
    let e = err_of(
        "putItem",
        json!({"TableName": "T", "Item": {"pk": {"S": "a"}}, "UpdateExpression": "SET s = :v"}),
    )
    .await;
    assert!(
        e.cause
            .contains("'UpdateExpression' is not a parameter of DynamoDB PutItem")
    );
    // Nothing of the refused calls was written.
    assert_eq!(
        get(&t, "a").await,
        json!({"pk": {"S": "a"}, "s": {"S": "x"}})
    );
}

#[tokio::test]
async fn composite_keys_and_number_keys_normalise() {
    let t = tables();
    call(&t, "putItem", json!({"TableName": "Both", "Item": {"pk": {"S": "a"}, "sk": {"N": "1"}, "v": {"S": "one"}}}))
        .await
        .unwrap();
    let out = call(
        &t,
        "getItem",
        json!({"TableName": "Both", "Key": {"pk": {"S": "a"}, "sk": {"N": "1.0"}}}),
    )
    .await
    .unwrap();
    assert_eq!(out["Item"]["v"], json!({"S": "one"}));
    assert_eq!(t.items("Both").len(), 1);
}
