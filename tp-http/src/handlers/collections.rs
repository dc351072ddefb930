//! `/api/collections`: collections, documents and search.

use http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use tp_core::vector::{NewCollection, NewDocument, SearchRequest};

use crate::Response;
use crate::context::Ctx;
use crate::error::ApiError;
use crate::response;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Upsert {
    documents: Vec<NewDocument>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteIds {
    ids: Vec<String>,
}

pub(crate) async fn create(mut ctx: Ctx) -> Result<Response, ApiError> {
    let new: NewCollection = ctx.json().await?;
    let collection = ctx.plane.vectors().create_collection(new).await?;
    response::json(StatusCode::CREATED, &collection)
}

pub(crate) async fn list(ctx: Ctx) -> Result<Response, ApiError> {
    let collections = ctx.plane.vectors().list_collections().await?;
    response::json_object(StatusCode::OK, "collections", &collections)
}

pub(crate) async fn get(ctx: Ctx) -> Result<Response, ApiError> {
    let collection = ctx
        .plane
        .vectors()
        .get_collection(ctx.param("name"))
        .await?;
    response::json(StatusCode::OK, &collection)
}

pub(crate) async fn delete(ctx: Ctx) -> Result<Response, ApiError> {
    ctx.plane
        .vectors()
        .delete_collection(ctx.param("name"))
        .await?;
    Ok(response::no_content())
}

pub(crate) async fn upsert(mut ctx: Ctx) -> Result<Response, ApiError> {
    let body: Upsert = ctx.json().await?;
    let upserted = ctx
        .plane
        .vectors()
        .upsert(ctx.param("name"), body.documents)
        .await?;
    response::json(StatusCode::OK, &json!({ "upserted": upserted }))
}

pub(crate) async fn delete_many(mut ctx: Ctx) -> Result<Response, ApiError> {
    let body: DeleteIds = ctx.json().await?;
    let deleted = ctx
        .plane
        .vectors()
        .delete_documents(ctx.param("name"), body.ids)
        .await?;
    response::json(StatusCode::OK, &json!({ "deleted": deleted }))
}

pub(crate) async fn get_document(ctx: Ctx) -> Result<Response, ApiError> {
    let with_vector = ctx.query_flag("include_vector")?;
    let document = ctx
        .plane
        .vectors()
        .get_document(ctx.param("name"), ctx.param("id"), with_vector)
        .await?;
    response::json(StatusCode::OK, &document)
}

pub(crate) async fn delete_document(ctx: Ctx) -> Result<Response, ApiError> {
    let id = ctx.param("id").to_owned();
    let deleted = ctx
        .plane
        .vectors()
        .delete_documents(ctx.param("name"), vec![id.clone()])
        .await?;
    if deleted == 0 {
        return Err(tp_core::Error::not_found(
            "document_not_found",
            format!("document {id:?} does not exist"),
        )
        .into());
    }
    Ok(response::no_content())
}

pub(crate) async fn search(mut ctx: Ctx) -> Result<Response, ApiError> {
    let request: SearchRequest = ctx.json().await?;
    let results = ctx
        .plane
        .vectors()
        .search(ctx.param("name"), request)
        .await?;
    response::json_object(StatusCode::OK, "results", &results)
}
