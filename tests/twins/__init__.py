"""Local stand-ins ("twins") for the OpenAI, fal.ai and S3 APIs, served over real HTTP so the
real SDKs can be exercised without internet or keys."""
