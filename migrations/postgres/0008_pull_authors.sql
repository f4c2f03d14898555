-- Who opened each pull request previewd comments on (Daily use): the dashboard shows it beside the
-- environment, as GitHub's list of the branch's open pull requests last said.
ALTER TABLE pr_comments ADD COLUMN author TEXT;
